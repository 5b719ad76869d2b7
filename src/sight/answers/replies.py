"""An LLM's reply to a response schema: found in its text (tolerantly: code fences, prose around the object),
checked against the schema, and what to ask for when it does not fit.

>>> schema = parse_schema({"type": "object", "properties": {"serial_number": {"type": "string"}}})
>>> text = '{"fields": {"serial_number": "SN-1"}, "citations": {"serial_number": [2]}}'
>>> read_reply(f"Here:\\n```json\\n{text}\\n```", schema)
Reply(fields={'serial_number': 'SN-1'}, citations={'serial_number': [2]}, problem=None)
>>> read_reply('{"serial_number": "SN-1"}', schema).fields  # the bare object, as a prompted model may answer
{'serial_number': 'SN-1'}
>>> read_reply("The serial number is SN-1.", schema).problem
'the answer holds no JSON object'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sight.answers.schema import ResponseSchema, parse_schema

__all__ = ["Reply", "parse_schema", "prompt_for", "read_reply", "repair_prompt"]

STRUCTURED_SYSTEM_PROMPT = (
    "You are a careful visual analyst who fills in JSON fields from what is visible in an image. Copy text "
    "character by character as printed. Use null for anything you cannot read; never guess. When numbered OCR "
    "lines are given, say in \"citations\", per field path (dotted for nested fields), the numbers of the lines "
    "each value was read from."
)


MAX_STARTS = 32  # braces tried as the start of the object: the reply's size bounds each try


@dataclass(frozen=True)
class Reply:
    fields: dict[str, Any] | None
    citations: dict[str, list[int]] = field(default_factory=dict)
    problem: str | None = None  # why the reply does not fit the schema (None: it does)


def prompt_for(schema: ResponseSchema) -> str:
    """The instruction a backend that refuses ``response_format`` gets in its prompt instead."""
    return ("Answer with one JSON object and nothing else, valid against this JSON Schema:\n"
            + json.dumps(schema.reply, separators=(",", ":")))


def repair_prompt(problem: str) -> str:
    return (f"That answer does not fit the JSON Schema: {problem}. Answer again with only the corrected JSON "
            "object.")


def read_reply(text: str, schema: ResponseSchema) -> Reply:
    found = _first_object(text)
    try:
        return _checked(found, schema)
    except RecursionError:
        return Reply(None, problem="the answer's JSON nests too deep")


def _checked(found: dict[str, Any] | None, schema: ResponseSchema) -> Reply:
    if found is None:
        return Reply(None, problem="the answer holds no JSON object")
    if "fields" not in found:
        found = {"fields": found}  # the fields alone, without the wrapper
    problems = schema.reply_errors(found)
    if problems:
        return Reply(None, problem="; ".join(problems[:3]))
    citations = {k: [n for n in v if isinstance(n, int)] for k, v in (found.get("citations") or {}).items()}
    return Reply(found["fields"], citations)


def _first_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (the whole text, else the first ``{`` from which one decodes)."""
    decoder = json.JSONDecoder()
    stripped = text.strip()
    try:
        whole = json.loads(stripped)
        if isinstance(whole, dict):
            return whole
    except (ValueError, RecursionError):  # nested past Python's stack: no object Sight can use
        pass
    start = stripped.find("{")
    for _ in range(MAX_STARTS):
        if start == -1:
            break
        try:
            value, _end = decoder.raw_decode(stripped, start)
            if isinstance(value, dict):
                return value
        except (ValueError, RecursionError):
            pass
        start = stripped.find("{", start + 1)
    return None
