"""Opaque pagination tokens: a cursor bound to one listing of one batch."""

from __future__ import annotations

import base64
import binascii
import json

from sight.errors import InvalidInputError

# Cursors are row sequence numbers: 64-bit, never negative (PostgreSQL's bigint, SQLite's INTEGER).
MAX_CURSOR = 2**63 - 1


def encode(kind: str, scope: int, after: int) -> str:
    raw = json.dumps({"k": kind, "s": scope, "a": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str | None, kind: str, scope: int) -> int | None:
    """The cursor in ``token``, which must have been issued for this ``kind`` and ``scope``."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after = data["a"]
        if (data["k"] == kind and data["s"] == scope and isinstance(after, int) and not isinstance(after, bool)
                and 0 <= after <= MAX_CURSOR):
            return int(after)
    except (binascii.Error, ValueError, KeyError, TypeError):
        pass
    raise InvalidInputError("invalid pagination_token")
