"""Wire models of the model registry and Spice-style multi-model predict (family 3)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from sight.schemas.common import ImageRef, Probability, Text

ModelStateName = Literal["ready", "not_loaded", "not_downloaded", "downloading", "failed", "unavailable"]


class ModelState(BaseModel):
    """Where a model stands: ``ready`` (loaded; for an LLM, reachable), ``not_loaded`` (its file is here and
    loads on first use), ``not_downloaded`` (downloads on first use), ``downloading``, ``failed`` (with the
    reason and what to do), ``unavailable`` (an LLM or OCR that cannot be used now, with what to set)."""

    state: ModelStateName
    reason: str | None = None
    downloaded_bytes: int | None = None
    total_bytes: int | None = None
    provider: str | None = Field(None, description="Where a loaded model runs: the ONNX Runtime execution "
                                 "provider its session got (CPU, CUDA, Tensorrt, OpenVINO), which may not be "
                                 "the one asked for (the server logs why). Null until it is loaded.")
    precision: str | None = Field(None, description="A loaded detector's weights: fp32, or int8 for a file "
                                  "`sight models quantize` wrote (read from its metadata). Null until loaded.")


class ModelPublic(BaseModel):
    name: str
    version: str
    task: Literal["detect", "ocr", "llm"]
    aliases: list[str]
    loaded: bool
    state: ModelState
    source: str | None = None
    shadow_of: str | None = None
    warning: str | None = Field(None, description="Something about this model its user should know (a file "
                                "under an official name that is not the official export, say).")


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
    warnings: list[str] = Field(default_factory=list, description="What is wrong with this server's install, "
                                "with the command that fixes it (two wheels writing the onnxruntime or cv2 "
                                "module, no ONNX Runtime at all).")


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


class PredictInput(ImageRef):
    """The input of one prediction: its image (``image_url`` or ``image_base64``), the LLM's query, detection
    thresholds."""

    model_config = ConfigDict(extra="forbid")

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
