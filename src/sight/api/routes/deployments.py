"""Deployments (family 2, Modelbit style): ``POST /v1/{deployment}/{ref}``.

Errors answer ``{"detail": {"code", "message"}}`` like every other route, plus ``"error": "<message>"``, the
field Modelbit clients read."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sight.api import bodies
from sight.api.deps import ServicesDep, authenticate
from sight.api.errors import error_headers, status_for
from sight.errors import InvalidInputError, OverloadedError, SightError
from sight.policies.admission import deployment_demands
from sight.schemas import DeploymentErrorResponse, reject_invalid_text

router = APIRouter(tags=["deployments"])
EXAMPLES: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "properties": {"data": {}, "batch": {"type": "boolean"}}, "required": ["data"]},
        "examples": {
            "single": {"value": {"data": ["https://example.com/bus.jpg", {"conf": 0.4}]}},
            "batch": {"value": {"data": [[1, "https://example.com/a.jpg"], [2, "https://example.com/b.jpg"]]}},
        }}}}
}


FAMILY2_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": DeploymentErrorResponse, "description": what} for status, what in {
        400: "Invalid body or arguments", 401: "Missing or invalid key", 404: "Unknown deployment, version or alias",
        413: "Body too large", 429: "Team quota used up", 500: "The deployment failed",
        502: "An upstream (image host, LLM) failed", 503: "At capacity", 504: "A stage timed out",
    }.items()
}


@router.post("/v1/{deployment}/{ref}", openapi_extra=EXAMPLES, responses={
    200: {"description": '{"data": ...}; batch rows sorted by id, failed rows in "errors"'}, **FAMILY2_ERRORS})
async def call_deployment(deployment: str, ref: str, request: Request, services: ServicesDep) -> JSONResponse:
    """Call a deployment: built-ins ``detect``, ``ocr``, ``analyze``, ``predict`` or a user function."""
    try:
        principal = await authenticate(request)
        try:
            body = bodies.loads(await request.body(), services.settings.server.max_json_depth)
        except ValueError as exc:
            raise InvalidInputError("the body is not valid JSON") from exc
        reject_invalid_text(body)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        # Resolved and read before anything is charged: an unknown deployment or a bad body costs nothing, and
        # a call is charged what it runs (a batch one run per row, a single call once), once admitted.
        call = services.deployments.prepare(deployment, ref, body, request_id)
        ticket = services.admission.admit(deployment_demands(call, services.settings.yolo.default_model))
        try:
            await services.quota.charge(principal.team_id, call.runs)
            return JSONResponse(await services.deployments.run(call))
        finally:
            ticket.release()
    except SightError as exc:
        status = status_for(exc)
        if isinstance(exc, OverloadedError):
            services.metrics.rejected.labels(exc.code).inc()
        message = exc.message if status < 500 or exc.code != "internal" else "internal error"
        return JSONResponse({"detail": {"code": exc.code, "message": message}, "error": message},
                            status_code=status, headers=error_headers(exc, status))
