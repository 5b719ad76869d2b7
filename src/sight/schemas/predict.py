"""Wire models of the prediction API (family 1): per-image options, item results, batch and stream answers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from sight.schemas.answers import SCHEMA_DESCRIPTION, Conflict, Evidence, FieldValues, Parsable, absent
from sight.schemas.common import Box, ErrorInfo, ImageRef, ImageSize, Probability, Text

SCHEMA_EXAMPLE = {"type": "object", "properties": {"serial_number": {
    "type": "string", "pattern": "SN-[A-Z0-9]{4}-[0-9]{4}-[A-Z0-9]{1,2}"}}}
# Any, not dict: whatever is sent is checked as a schema (400 invalid_schema), not as a pydantic type.
ResponseSchemaField = Field(None, description=SCHEMA_DESCRIPTION, examples=[SCHEMA_EXAMPLE],
                            json_schema_extra={"type": "object"})


class ItemOptions(BaseModel):
    """What to run on one image: the v1 ``metadata`` object, also embedded in v2 items."""

    model_config = ConfigDict(extra="ignore")

    is_yolo: StrictBool = False
    is_llm: StrictBool = False
    is_ocr: StrictBool = False
    yolo_model: Text | None = None
    conf: Probability | None = None
    iou: Probability | None = None
    classes: list[Text | StrictInt] | None = None
    llm_model: Text | None = None
    response_schema: Any = ResponseSchemaField


class PredictItemV2(ItemOptions, ImageRef):
    """One v2 item: its image (``image_url`` or ``image_base64``) and what to run on it."""

    filename: Text | None = None


class PredictRequestV2(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "api_key": "sk-sight-...",
                    "query": "find the serial number",
                    "data": [{"image_url": "https://example.com/a.jpg", "filename": "a.jpg",
                              "is_yolo": True, "is_llm": True}],
                }
            ]
        },
    )

    api_key: Text | None = None
    query: Text | None = None
    response_schema: Any = Field(
        None, description="The response schema of every item that names none of its own. " + SCHEMA_DESCRIPTION,
        json_schema_extra={"type": "object"})
    data: list[PredictItemV2] = Field(min_length=1)


class DetectionOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str
    class_id: int = Field(alias="class", serialization_alias="class")
    confidence: float
    box: Box


class YoloResult(BaseModel):
    model: str
    model_version: str
    detections: list[DetectionOut]


class OcrLineOut(BaseModel):
    text: str
    confidence: float
    box: Box


class OcrResult(BaseModel):
    text: str
    lines: list[OcrLineOut]


class LlmUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LlmResult(BaseModel):
    answer: str
    model: str
    usage: LlmUsage
    truncated: bool = Field(False, description="The answer was cut: the backend stopped at max_tokens, or sent "
                            "more than max_tokens can hold and Sight kept the first SIGHT_LLM__MAX_TOKENS x 16 "
                            "bytes.")
    structured: Literal["schema", "prompt"] | None = Field(
        None, exclude_if=absent,
        description="Only with a response schema: how it reached the backend, as its `response_format` json_schema "
                    "(`schema`) or, where the backend refused that, in the prompt (`prompt`).")


class ItemResult(Parsable):
    index: int
    filename: str | None
    status: Literal["done", "error"]
    image: ImageSize | None = None
    yolo: YoloResult | None = None
    ocr: OcrResult | None = None
    llm: LlmResult | None = None
    fields: FieldValues | None = Field(None, description="With a response schema: the values found (null: not "
                                       "found), valid against the schema with every property nullable")
    evidence: dict[str, list[Evidence]] | None = Field(None, description="Per property path (dotted when nested): "
                                                       "where Sight read the value, best first")
    verified: dict[str, bool | None] | None = Field(None, description="Per property path: true when two independent "
                                                    "readings agree, false when they differ, null when one read it")
    timings_ms: dict[str, float] = Field(default_factory=dict)
    error: ErrorInfo | None = None


class Summary(BaseModel):
    total: int
    done: int
    error: int


class MergedAnswer(Parsable):
    """The request's fields across its images (null when no item asked for a schema): per property the verified
    value, else the first image's in input order; evidence entries name their image; ``conflicts`` lists every
    image's value where they differ."""

    # Left out when no item asked for a schema: such clients see the request's result as before.
    fields: FieldValues | None = Field(None, exclude_if=absent)
    evidence: dict[str, list[Evidence]] | None = Field(None, exclude_if=absent)
    verified: dict[str, bool | None] | None = Field(None, exclude_if=absent)
    conflicts: dict[str, list[Conflict]] | None = Field(None, exclude_if=absent)


class BatchResult(MergedAnswer):
    items: list[ItemResult]
    answer: str | None
    summary: Summary
    duration_ms: float


class PredictBatchResponse(BaseModel):
    code: Literal[0, 1]
    result: BatchResult


class StreamProcessing(BaseModel):
    status: Literal["processing"] = "processing"
    index: int
    filename: str | None


class StreamDone(BaseModel):
    status: Literal["done"] = "done"
    index: int
    filename: str | None
    result: ItemResult


class StreamError(BaseModel):
    """An item that failed. ``result``, when some of its stages worked: the item as the batch answer has it,
    with what those stages found (an item whose one stage failed keeps every other stage's result)."""

    status: Literal["error"] = "error"
    index: int
    filename: str | None
    error: ErrorInfo
    result: ItemResult | None = None


class StreamComplete(MergedAnswer):
    status: Literal["complete"] = "complete"
    summary: Summary
    answer: str | None
    duration_ms: float
