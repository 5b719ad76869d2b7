"""Wire models of the Batches API (family 4, xAI Batch API compatible)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sight.schemas.common import ErrorInfo, ImageRef, Text
from sight.schemas.predict import ItemOptions, ItemResult


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


class VisionPredict(ItemOptions, ImageRef):
    """One batch request: its image (``image_url`` or ``image_base64``), what to run, and the LLM's query."""

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
    """One finished request: ``batch_result`` when it succeeded; ``error`` (and ``error_message``) when it failed,
    then with ``batch_result`` too when some of its stages worked (the item, whose ``status`` is ``error``, with
    what they found)."""

    batch_request_id: str
    batch_result: BatchResultBody | None = None
    error_message: str | None = None
    error: ErrorInfo | None = None


class BatchResultList(BaseModel):
    results: list[BatchResultEntry]
    pagination_token: str | None
