"""One image's fields: the LLM's values and the OCR's pattern matches, each with the evidence Sight finds for it
and whether two independent readings agree (API.md section 6).

A string property with a ``pattern`` is filled from the OCR lines (the first match in reading order) with or
without an LLM. With an LLM:

- its value, checked against the OCR: read there exactly or normalised -> ``verified: true``; only near (a
  confusable character) -> ``false``, the OCR's line in the evidence; not read at all -> ``null``;
- a pattern field's LLM value that fails the pattern gives way to the OCR's match (``false``: they disagree),
  else null; where both fit the pattern and differ, the LLM's value stands, ``false``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sight.answers.evidence import line_evidence, locate
from sight.answers.paths import put_at, value_at
from sight.answers.replies import Reply
from sight.answers.schema import FieldSpec, ResponseSchema
from sight.schemas import Answer, DetectionOut, Evidence, OcrLineOut


def fill(schema: ResponseSchema, reply: Reply | None, lines: Sequence[OcrLineOut] | None,
         detections: Sequence[DetectionOut]) -> Answer:
    """``reply``: the LLM's (None: no LLM ran, or its answer did not fit). ``lines``: the OCR's, in reading
    order (None: no OCR ran)."""
    fields: dict[str, Any] = {}
    evidence: dict[str, list[Evidence]] = {}
    verified: dict[str, bool | None] = {}
    for spec in schema.fields:
        given = value_at(reply.fields, spec.path) if reply is not None else None
        cited = reply.citations.get(spec.path, []) if reply is not None else []
        value, found, agree = _one(spec, given, lines or [], detections, cited)
        if not schema.fits(spec, value):  # an OCR match that breaks another keyword of its property
            value, found, agree = None, [], None
        put_at(fields, spec.path, value)
        evidence[spec.path], verified[spec.path] = found, agree
    return Answer(fields=fields, evidence=evidence, verified=verified)


def _one(spec: FieldSpec, given: Any, lines: Sequence[OcrLineOut], detections: Sequence[DetectionOut],
         cited: Sequence[int]) -> tuple[Any, list[Evidence], bool | None]:
    read = _pattern_match(spec, lines) if spec.pattern is not None else None
    if spec.pattern is not None and given is not None:
        given = _trimmed(spec, given)
    if given is None or given is _FAILED:
        if read is None:
            return None, [], None
        line, text = read
        # The OCR's match alone (one reader: unchecked), or in place of an LLM value that fails the pattern.
        return text, [line_evidence(line, "exact")], None if given is None else False
    if isinstance(given, list):
        found = [e for part in given for e in locate(part, lines, detections, cited)]
    else:
        found = locate(given, lines, detections, cited)
    best = next((e.match for e in found if e.source == "ocr"), None)
    agree = True if best in ("exact", "normalised") else False if best == "near" else None
    if agree is None and read is not None:  # the OCR read another value that fits the pattern: its reading
        agree = False
        found = [*found, line_evidence(read[0], "exact")]
    return given, found, agree


_FAILED = object()  # a pattern field's LLM value that fails the pattern


def _trimmed(spec: FieldSpec, given: Any) -> Any:
    """A pattern field's LLM value: as given when the pattern matches all of it; the matched part when it matches
    inside (``S/N: SN-1234`` -> ``SN-1234``); else ``_FAILED``."""
    if not isinstance(given, str):
        return _FAILED
    if spec.pattern.fullmatch(given) is not None:
        return given
    inside = spec.pattern.search(given)
    return inside.group(0) if inside is not None and inside.group(0) else _FAILED


def _pattern_match(spec: FieldSpec, lines: Sequence[OcrLineOut]) -> tuple[OcrLineOut, str] | None:
    for line in lines:
        found = spec.pattern.search(line.text)
        if found is not None and found.group(0):
            return line, found.group(0)
    return None
