"""What the sync and async clients share: request building and error mapping. No I/O here."""

from __future__ import annotations

from typing import Any

import httpx

from sight.errors import SightError, error_for_code

DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)


def auth_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def raise_for_error(response: httpx.Response) -> None:
    """Turn an error response into the matching ``SightError`` subclass."""
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, dict) and "code" in detail:
        raise error_for_code(str(detail["code"]), str(detail.get("message", "")))
    raise SightError(f"HTTP {response.status_code}: {response.text[:200]}")


def page_params(limit: int | None, token: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if limit is not None:
        params["limit"] = limit
    if token:
        params["pagination_token"] = token
    return params
