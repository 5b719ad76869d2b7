"""A request's conclusion over its items' results: the answer to its query and, where items asked for a
response schema, their fields merged across images."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sight.answers.merge import merge
from sight.errors import SightError
from sight.schemas import Answer, ItemResult, MergedAnswer

if TYPE_CHECKING:
    from sight.pipeline.pipeline import Pipeline

log = logging.getLogger(__name__)


async def conclude(pipeline: Pipeline, query: str | None, results: Sequence[ItemResult]
                   ) -> tuple[str | None, MergedAnswer]:
    """The request's answer and merged fields. With a schema the answer says each value and the image it came
    from, or "not found", with no further LLM call; without one, it is :func:`condense`'s."""
    asked = [(r.index, r.filename, Answer(fields=r.fields, evidence=r.evidence or {}, verified=r.verified or {}))
             for r in results if r.fields is not None]
    if not asked:
        return await condense(pipeline, query, results), MergedAnswer()
    merged, said = merge(asked)
    if any(r.llm is not None and r.fields is None for r in results):  # items without a schema answered in prose
        return await condense(pipeline, query, results), merged
    return said, merged


async def condense(pipeline: Pipeline, query: str | None, results: Sequence[ItemResult]) -> str | None:
    """The batch answer: one more LLM call condenses two or more per-image answers to ``query``."""
    answers = [(r.filename or f"image {r.index}", r.llm.answer) for r in results if r.llm is not None]
    if query and len(answers) >= 2:
        try:
            client, _model = pipeline.runtime.llm_client(pipeline.hub.current, None, None)
            with pipeline.llm_deadline():
                return (await client.condense(query, answers)).answer
        except SightError as exc:
            log.warning("condensing %d answers failed: %s", len(answers), exc.code)
            return None
    return answers[0][1] if len(answers) == 1 else None
