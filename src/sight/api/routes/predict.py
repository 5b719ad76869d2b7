"""Prediction API (family 1): batch and NDJSON stream, v1 multipart and v2 JSON."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from sight.api.deps import BodyPrincipalDep, ServicesDep, authenticate
from sight.api.errors import documented
from sight.api.forms import PredictCall, read_v1, read_v2
from sight.api.streaming import NDJSON, ndjson_response
from sight.policies.admission import demands
from sight.schemas import PredictBatchResponse, PredictRequestV2
from sight.schemas.answers import SCHEMA_DESCRIPTION
from sight.schemas.predict import SCHEMA_EXAMPLE
from sight.storage.keys import Principal

router = APIRouter(prefix="/api/v1/inference/predict", tags=["prediction"])

ERRORS = documented(
    s400="Invalid request (never FastAPI's 422)",
    s401="Missing, unknown or revoked API key",
    s413="Too many files or bytes",
    s429="The team's image quota is used up; retry after the Retry-After seconds",
    s503="At capacity for a model; retry after the Retry-After seconds",
)
METADATA_EXAMPLE = '{"is_yolo": true, "is_llm": false, "is_ocr": false, "conf": 0.25}'
MULTIPART_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files", "metadata"],
                    "properties": {
                        "api_key": {"type": "string", "description": "or send Authorization: Bearer <key>"},
                        "query": {"type": "string", "example": "find the serial number"},
                        "response_schema": {
                            "type": "string",
                            "example": json.dumps(SCHEMA_EXAMPLE),
                            "description": "JSON: the response schema of every file whose metadata names none. "
                                           + SCHEMA_DESCRIPTION,
                        },
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "metadata": {
                            "type": "array",
                            "items": {"type": "string", "example": METADATA_EXAMPLE},
                            "description": "one JSON object per file, in the same order",
                        },
                    },
                }
            }
        },
    }
}
STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {NDJSON: {"schema": {"type": "string"}}}, "description": "one JSON object per line"},
    **ERRORS,
}


def _batch_response(result: Any) -> PredictBatchResponse:
    return PredictBatchResponse(code=0 if result.summary.error == 0 else 1, result=result)


async def _admit(request: Request, services: ServicesDep, call: PredictCall,
                 principal: Principal | None = None) -> None:
    """Authenticate (unless done already), charge the team's quota (429), take capacity for the call's items
    (503 when full); the capacity is given back when the call closes."""
    principal = principal or call.principal or await authenticate(request, call.api_key)
    # Refused (503) before the team's quota is charged: a request shed for capacity costs nothing.
    services.pipeline.pixels.check()  # past the decode queue's bound
    ticket = services.admission.admit(demands(call.items, services.settings.yolo.default_model))
    call.on_close.append(ticket.release)
    await services.quota.charge(principal.team_id, len(call.items))


async def _run_batch(request: Request, services: ServicesDep, call: PredictCall,
                     principal: Principal | None = None) -> PredictBatchResponse:
    try:
        await _admit(request, services, call, principal)
        services.metrics.requests.labels(request.url.path).inc()
        return _batch_response(await services.pipeline.run_batch(call.items, call.query))
    finally:
        await call.close()


async def _run_stream(request: Request, services: ServicesDep, call: PredictCall,
                      principal: Principal | None = None) -> StreamingResponse:
    try:
        await _admit(request, services, call, principal)
    except BaseException:
        await call.close()
        raise
    services.metrics.requests.labels(request.url.path).inc()
    return ndjson_response(request, services.pipeline, call)


@router.post("/batch", response_model=PredictBatchResponse, responses=ERRORS, openapi_extra=MULTIPART_BODY)
async def predict_batch(request: Request, services: ServicesDep) -> PredictBatchResponse:
    """Run the chosen stages on every uploaded file; items come back in input order."""
    call = await read_v1(request, services.settings.server.max_files, services.settings.server.max_json_depth)
    return await _run_batch(request, services, call)


@router.post("/batch/v2", response_model=PredictBatchResponse, responses=ERRORS)
async def predict_batch_v2(
    principal: BodyPrincipalDep, body: PredictRequestV2, request: Request, services: ServicesDep
) -> PredictBatchResponse:
    """Like ``/batch`` with images given as URLs (fetched through the SSRF guard) or base64."""
    return await _run_batch(request, services, await read_v2(body, services.settings.server.max_files), principal)


@router.post("/stream", response_class=StreamingResponse, responses=STREAM_RESPONSE,
             openapi_extra=MULTIPART_BODY)
async def predict_stream(request: Request, services: ServicesDep) -> StreamingResponse:
    """NDJSON: a ``processing`` line when an item starts, ``done``/``error`` as it ends, ``complete`` last."""
    call = await read_v1(request, services.settings.server.max_files, services.settings.server.max_json_depth)
    return await _run_stream(request, services, call)


@router.post("/stream/v2", response_class=StreamingResponse, responses=STREAM_RESPONSE)
async def predict_stream_v2(principal: BodyPrincipalDep, body: PredictRequestV2, request: Request,
                            services: ServicesDep) -> StreamingResponse:
    """The stream of ``/stream`` for a v2 JSON body."""
    return await _run_stream(request, services, await read_v2(body, services.settings.server.max_files), principal)
