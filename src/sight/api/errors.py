"""The one table from error class to HTTP status, and the handlers that answer with it.

Request-level errors answer ``{"detail": {"code": ..., "message": ...}}``. Validation problems are 400
and never echo the input (which may hold a key).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from sight.errors import (
    AuthenticationError,
    CancelledItemError,
    ConflictError,
    EngineUnavailableError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RateLimitedError,
    SightError,
    StageTimeoutError,
    UpstreamError,
)

log = logging.getLogger(__name__)

STATUS: dict[type[SightError], int] = {
    PayloadTooLargeError: 413,
    InvalidInputError: 400,
    AuthenticationError: 401,
    ForbiddenError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    CancelledItemError: 409,
    EngineUnavailableError: 503,
    OverloadedError: 503,
    RateLimitedError: 429,
    UpstreamError: 502,
    StageTimeoutError: 504,
    SightError: 500,
}
CODE_FOR_STATUS = {400: "invalid_input", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                   405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type"}


def documented(**statuses: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, all with the error body: ``documented(s404="No such batch")``."""
    from sight.schemas import ErrorResponse

    return {int(k[1:]): {"model": ErrorResponse, "description": v} for k, v in statuses.items()}


def status_for(exc: SightError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_headers(exc: SightError | None, status: int) -> dict[str, str] | None:
    if isinstance(exc, OverloadedError):
        return {"Retry-After": str(exc.retry_after)}
    return {"WWW-Authenticate": "Bearer"} if status == 401 else None


def error_response(status: int, code: str, message: str, exc: SightError | None = None) -> JSONResponse:
    return JSONResponse({"detail": {"code": code, "message": message}}, status_code=status,
                        headers=error_headers(exc, status))


async def _sight_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SightError)
    status = status_for(exc)
    if isinstance(exc, OverloadedError):
        services = getattr(request.app.state, "services", None)
        if services is not None:
            services.metrics.rejected.labels(exc.code).inc()
    if status >= 500:
        log.warning("request failed: %s: %s", exc.code, exc.message)
    return error_response(status, exc.code, exc.message, exc)


def describe_validation(exc: RequestValidationError) -> str:
    """Where and what, without the offending values."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, "invalid_input", describe_validation(exc))


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = CODE_FOR_STATUS.get(exc.status_code, "internal" if exc.status_code >= 500 else "invalid_input")
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    response = error_response(exc.status_code, code, message)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _client_gone(_request: Request, _exc: Exception) -> JSONResponse:
    # The client hung up mid-upload: nobody will read this answer, and it is not a server error.
    log.debug("client disconnected before its request body was read")
    return error_response(400, "invalid_input", "the client disconnected before the request body was read")


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal", "internal server error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(SightError, _sight_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
