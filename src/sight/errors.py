"""Sight's one exception tree. Standard library only: the client SDK imports it too.

Every class has a stable ``code`` that goes on the wire; ``api/errors.py`` maps classes to HTTP status.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "CancelledItemError",
    "ConflictError",
    "DeploymentRowsError",
    "EngineUnavailableError",
    "FetchFailedError",
    "ForbiddenError",
    "ImageTooLargeError",
    "InvalidImageError",
    "InvalidInputError",
    "InvalidSchemaError",
    "LLMError",
    "LLMInvalidOutputError",
    "LLMUnavailableError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "SightError",
    "StageTimeoutError",
    "UpstreamError",
    "UrlNotAllowedError",
    "error_for_code",
]


class SightError(Exception):
    code = "internal"

    def __init__(self, message: str = "internal error") -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InvalidInputError(SightError):
    code = "invalid_input"


class InvalidImageError(InvalidInputError):
    code = "invalid_image"


class InvalidSchemaError(InvalidInputError):
    """A ``response_schema`` that is not valid JSON Schema, is too large or deep, or holds a pattern that cannot
    run in linear time."""

    code = "invalid_schema"


class ImageTooLargeError(InvalidInputError):
    code = "image_too_large"


class UrlNotAllowedError(InvalidInputError):
    code = "url_not_allowed"


class PayloadTooLargeError(InvalidInputError):
    code = "payload_too_large"


class AuthenticationError(SightError):
    code = "unauthorized"


class ForbiddenError(SightError):
    """The key is valid but may not do this (an admin operation with a team key)."""

    code = "forbidden"


class NotFoundError(SightError):
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class ConflictError(SightError):
    code = "conflict"


class EngineUnavailableError(SightError):
    code = "engine_unavailable"


class LLMUnavailableError(EngineUnavailableError):
    code = "llm_unavailable"


class ModelUnavailableError(EngineUnavailableError):
    """A model the catalog declares whose file cannot be had now: its download failed, downloads are off, or
    its path holds no file. The request was right; the server cannot serve it (503)."""

    code = "model_unavailable"


class UpstreamError(SightError):
    code = "upstream_error"


class FetchFailedError(UpstreamError):
    code = "fetch_failed"


class LLMError(UpstreamError):
    code = "llm_error"


class LLMInvalidOutputError(LLMError):
    """The LLM's answer did not fit the response schema, after one repair attempt. ``answer``: its raw text,
    ``structured``: how the schema reached the backend (``schema`` or ``prompt``)."""

    code = "llm_invalid_output"

    def __init__(self, message: str = "the vision LLM's answer does not fit the response schema",
                 answer: str = "", model: str = "", structured: str | None = None, prompt_tokens: int = 0,
                 completion_tokens: int = 0, truncated: bool = False) -> None:
        super().__init__(message)
        self.answer, self.model, self.structured = answer, model, structured
        self.prompt_tokens, self.completion_tokens, self.truncated = prompt_tokens, completion_tokens, truncated

    def __reduce__(self) -> tuple[object, ...]:  # its fields cross processes (the Ray runtime)
        return type(self), (self.message, self.answer, self.model, self.structured, self.prompt_tokens,
                            self.completion_tokens, self.truncated)


class OverloadedError(SightError):
    """The server is at capacity for this model; retry after ``retry_after`` seconds."""

    code = "overloaded"

    def __init__(self, message: str = "server overloaded", retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(OverloadedError):
    """The team used its quota; retry after ``retry_after`` seconds."""

    code = "rate_limited"


class StageTimeoutError(SightError):
    code = "timeout"


class CancelledItemError(SightError):
    code = "cancelled"


class DeploymentRowsError(SightError):
    """Rows of a deployment batch call failed. ``data`` holds every row as the server sorted it (failed ones
    ``[id, None]``); ``errors`` maps each failed row's id to its error (a ``SightError`` subclass)."""

    code = "rows_failed"

    def __init__(self, data: list[Any], errors: dict[Any, SightError]) -> None:
        shown = "; ".join(f"{row_id!r}: {e.code}: {e.message}" for row_id, e in list(errors.items())[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        super().__init__(f"{len(errors)} of {len(data)} rows failed: {shown}{more}")
        self.data = data
        self.errors = errors


def _all_subclasses(cls: type[SightError]) -> list[type[SightError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def error_for_code(code: str, message: str) -> SightError:
    """The exception a wire ``{"code", "message"}`` pair stands for (used by the client)."""
    for cls in _all_subclasses(SightError):
        if cls.code == code:
            return cls(message)
    return SightError(message)
