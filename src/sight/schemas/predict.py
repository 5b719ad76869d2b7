"""Wire models: every request and response shape of the HTTP API, named by use."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

Probability = Annotated[float, Field(ge=0.0, le=1.0)]



def valid_unicode(value: str) -> str:
    """Refuse text that cannot be written back out as UTF-8 (a lone surrogate such as ``"\\ud800"`` in JSON):
    it would fail the answer, or a log line, long after it was accepted."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it holds a lone surrogate)") from None
    return value


Text = Annotated[StrictStr, AfterValidator(valid_unicode)]


def reject_invalid_text(value: Any, where: str = "body") -> None:
    """``valid_unicode`` over free-form JSON (deployment arguments): every string and key, at any depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                valid_unicode(item)
            except ValueError as exc:
                from sight.errors import InvalidInputError

                raise InvalidInputError(f"{where}: {exc}") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)

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


class PredictItemV2(ItemOptions):
    image_url: Text | None = None
    image_base64: Text | None = None
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


class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


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


class ImageSize(BaseModel):
    width: int
    height: int


class ErrorInfo(BaseModel):
    code: str
    message: str


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


class ErrorResponse(BaseModel):
    """Request-level error body of every family."""

    detail: ErrorInfo


class DeploymentErrorResponse(ErrorResponse):
    """Deployments answer the same ``detail`` plus the ``error`` message Modelbit clients read."""

    error: str


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
    status: Literal["error"] = "error"
    index: int
    filename: str | None
    error: ErrorInfo


class StreamComplete(BaseModel):
    status: Literal["complete"] = "complete"
    summary: Summary
    answer: str | None
    duration_ms: float


class Health(BaseModel):
    status: str
    checks: dict[str, Any] = Field(default_factory=dict)


# --- Batches (xAI Batch API compatible) ---------------------------------------------------------------


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [{"name": "serial numbers, line 4"}]})

    name: Text = Field(min_length=1, max_length=500)


class BatchState(BaseModel):
    num_requests: int
    num_pending: int
    num_success: int
    num_error: int
    num_cancelled: int


class BatchPublic(BaseModel):
    batch_id: str
    name: str
    create_time: str
    expire_time: str
    cancel_time: str | None
    create_api_key_id: str
    status: Literal["processing", "ended", "cancelled", "expired"]
    state: BatchState


class BatchList(BaseModel):
    batches: list[BatchPublic]
    pagination_token: str | None


class VisionPredict(ItemOptions):
    image_url: Text | None = None
    image_base64: Text | None = None
    filename: Text | None = None
    query: Text | None = None


class BatchRequestBody(BaseModel):
    vision_predict: VisionPredict


class BatchRequestIn(BaseModel):
    batch_request_id: Text | None = Field(None, min_length=1, max_length=200)
    batch_request: BatchRequestBody


class BatchRequestsAdd(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"batch_requests": [
        {"batch_request_id": "img-1", "batch_request": {"vision_predict": {
            "image_url": "https://example.com/label.jpg", "is_ocr": True, "is_llm": True,
            "query": "find the serial number"}}}]}]})

    batch_requests: list[BatchRequestIn] = Field(min_length=1)


class BatchRequestIds(BaseModel):
    batch_request_ids: list[str]


class BatchRequestMetadata(BaseModel):
    batch_request_id: str
    endpoint: Literal["vision_predict"] = "vision_predict"
    model: str | None
    state: Literal["pending", "succeeded", "failed", "cancelled"]
    create_time: str
    finish_time: str | None


class BatchRequestList(BaseModel):
    batch_request_metadata: list[BatchRequestMetadata]
    pagination_token: str | None


class BatchResponseBody(BaseModel):
    vision_predict: ItemResult


class BatchResultBody(BaseModel):
    response: BatchResponseBody


class BatchResultEntry(BaseModel):
    batch_request_id: str
    batch_result: BatchResultBody | None = None
    error_message: str | None = None
    error: ErrorInfo | None = None


class BatchResultList(BaseModel):
    results: list[BatchResultEntry]
    pagination_token: str | None


# --- Models and multi-model predict (Spice style) ------------------------------------------------------


ModelStateName = Literal["ready", "not_loaded", "not_downloaded", "downloading", "failed", "unavailable"]


class ModelState(BaseModel):
    """Where a model stands: ``ready`` (loaded; for an LLM, reachable), ``not_loaded`` (its file is here and
    loads on first use), ``not_downloaded`` (downloads on first use), ``downloading``, ``failed`` (with the
    reason and what to do), ``unavailable`` (an LLM or OCR that cannot be used now, with what to set)."""

    state: ModelStateName
    reason: str | None = None
    downloaded_bytes: int | None = None
    total_bytes: int | None = None


class ModelPublic(BaseModel):
    name: str
    version: str
    task: Literal["detect", "ocr", "llm"]
    aliases: list[str]
    loaded: bool
    state: ModelState
    source: str | None = None
    shadow_of: str | None = None


class LLMPublic(BaseModel):
    """The default vision LLM: configured, or found by discovery (a local Ollama), or what to set."""

    backend: Literal["ollama", "openai-compatible"] | None = None
    base_url: str | None = None
    model: str | None = None
    state: Literal["ready", "unavailable"]
    reason: str | None = None


class ModelList(BaseModel):
    models: list[ModelPublic]
    llm: LLMPublic | None = None


class ShadowAgreement(BaseModel):
    """How a shadow agrees with its primary, with the counts behind each figure. Detectors: precision =
    matched_boxes / shadow_boxes, recall = matched_boxes / primary_boxes, pooled over every compared run;
    null while the count below the line is zero (a shadow that returned no boxes has no precision)."""

    primary: str
    shadow: str
    runs: int
    errors: int
    compared: int = Field(description="Runs that produced an output to compare (runs - errors).")
    exact_matches: int
    exact_match: float | None
    precision: float | None
    recall: float | None
    primary_boxes: int | None = None
    shadow_boxes: int | None = None
    matched_boxes: int | None = None


class ModelDetail(BaseModel):
    name: str
    serves: str | None = Field(None, description="The version the bare name (and `latest`) serves; null: none.")
    serves_why: str = Field(description="Why that version: an explicit alias, or the highest that is no shadow.")
    splits: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="A/B splits: alias -> {version: share of traffic}, shares summing to 1.")
    versions: list[ModelPublic]
    shadows: list[ShadowAgreement]


class PredictInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_url: Text | None = None
    image_base64: Text | None = None
    query: Text | None = None
    conf: Probability | None = None
    iou: Probability | None = None
    classes: list[Text | StrictInt] | None = None


class PredictionSpec(BaseModel):
    model_name: Text
    model_version: Text | StrictInt | None = None
    input: PredictInput | None = None


class MultiPredictRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "input": {"image_url": "https://example.com/bus.jpg"},
        "predictions": [{"model_name": "yolo11n"}, {"model_name": "yolo11n", "model_version": 2},
                        {"model_name": "rapidocr"}]}]})

    input: PredictInput | None = None
    predictions: list[PredictionSpec] = Field(min_length=1, max_length=32)


class PredictionOut(BaseModel):
    status: Literal["Success", "BadRequest", "InternalError"]
    model_name: str
    model_version: str | None
    prediction: Any = None
    duration_ms: int = Field(ge=0, description="Whole milliseconds, as the API document types it.")
    error_message: str | None = None


class MultiPredictResponse(BaseModel):
    duration_ms: int = Field(ge=0, description="Whole milliseconds, as the API document types it.")
    predictions: list[PredictionOut]
