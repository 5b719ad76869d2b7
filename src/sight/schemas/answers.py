"""Wire models of structured answers (API.md section 6): evidence for a field's value, and conflicts between
images."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from sight.schemas.common import Box

SCHEMA_DESCRIPTION = (
    "A JSON Schema of an object (nested objects allowed, at most 16 KiB and 8 deep). Each item then carries "
    "`fields` (valid against it, every property nullable: null = not found), `evidence` and `verified` per "
    "property path. A string property with a `pattern` (RE2: linear time) is filled from the OCR lines, with "
    "or without an LLM. Invalid: 400 `invalid_schema`."
)
FieldValues = dict[str, Any]


def absent(value: object) -> bool:
    """``Field(exclude_if=absent)``: a key left out of the JSON when it has no value."""
    return value is None


class Evidence(BaseModel):
    """Where Sight read a field's value: an OCR line (``text``: the whole line) or a detection (``name``: its
    class); ``box`` in the original image's pixels. Request-level entries add the image's ``index`` and
    ``filename``."""

    source: Literal["ocr", "detection"]
    match: Literal["exact", "normalised", "near"] = Field(
        description="exact; normalised (case, spacing); near (one or two confusable characters: O/0, I/1/l, "
                    "S/5, B/8, Z/2)")
    text: str | None = Field(None, exclude_if=absent)
    name: str | None = Field(None, exclude_if=absent)
    confidence: float
    box: Box
    index: int | None = Field(None, exclude_if=absent)
    filename: str | None = Field(None, exclude_if=absent)


class Conflict(BaseModel):
    """One image's value for a property where images hold different values."""

    index: int
    filename: str | None
    value: Any
    verified: bool | None


class Answer(BaseModel):
    """Fields, their evidence and whether each was verified: one image's, or a request's merged."""

    fields: FieldValues
    evidence: dict[str, list[Evidence]]
    verified: dict[str, bool | None]


class Parsable(BaseModel):
    """A result whose ``fields`` the Python client can read as an instance of the pydantic class it sent as the
    response schema: ``parsed``, None when the found fields do not validate against the class (as OpenAI's SDK
    does)."""

    _parse_as: type[BaseModel] | None = PrivateAttr(None)

    @property
    def parsed(self) -> Any:
        fields = getattr(self, "fields", None)
        if self._parse_as is None or fields is None:
            return None
        try:
            return self._parse_as.model_validate(fields)
        except ValidationError:
            return None
