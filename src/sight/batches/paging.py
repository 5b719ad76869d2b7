"""Opaque pagination tokens: a cursor bound to one listing of one batch."""

from __future__ import annotations

import base64
import binascii
import json

from sight.errors import InvalidInputError


def encode(kind: str, scope: int, after: int) -> str:
    raw = json.dumps({"k": kind, "s": scope, "a": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str | None, kind: str, scope: int) -> int | None:
    """The cursor in ``token``, which must have been issued for this ``kind`` and ``scope``."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data["k"] == kind and data["s"] == scope and isinstance(data["a"], int):
            return int(data["a"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        pass
    raise InvalidInputError("invalid pagination_token")
