"""Wire models of the prediction API (family 1): per-image options, item results, batch and stream answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from sight.schemas.common import Box, ErrorInfo, ImageRef, ImageSize, Probability, Text


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


class ItemResult(BaseModel):
    index: int
    filename: str | None
    status: Literal["done", "error"]
    image: ImageSize | None = None
    yolo: YoloResult | None = None
    ocr: OcrResult | None = None
    llm: LlmResult | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    error: ErrorInfo | None = None


class Summary(BaseModel):
    total: int
    done: int
    error: int


class BatchResult(BaseModel):
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


class StreamComplete(BaseModel):
    status: Literal["complete"] = "complete"
    summary: Summary
    answer: str | None
    duration_ms: float
