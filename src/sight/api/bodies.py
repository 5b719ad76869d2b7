"""JSON that Sight parses itself (v1 ``metadata`` fields, deployment bodies, the key in a JSON body), bounded in
nesting depth before it is parsed: Python's parser recurses once per level, and a body of ``[`` repeated
200,000 times would otherwise end in a RecursionError.

>>> loads('{"is_yolo": true}', 64)
{'is_yolo': True}
>>> loads("[" * 100 + "]" * 100, 64)
Traceback (most recent call last):
...
sight.errors.InvalidInputError: JSON nested deeper than 64 levels
"""

from __future__ import annotations

import json
import re
from typing import Any

from sight.errors import InvalidInputError

# A string (skipped whole, escapes included) or a bracket; everything else between them is irrelevant to depth.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_BYTE_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def too_deep(data: str | bytes, max_depth: int) -> bool:
    """Whether ``data``, read as JSON, nests arrays and objects more than ``max_depth`` levels. Linear, and
    quick on large bodies: long strings (base64 images) are one match each."""
    tokens = _TOKENS if isinstance(data, str) else _BYTE_TOKENS
    depth = 0
    for match in tokens.finditer(data):  # type: ignore[arg-type]
        first = match.group()[:1]
        if first in ("[", "{", b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return True
        elif first in ("]", "}", b"]", b"}"):
            depth -= 1
    return False


def loads(data: str | bytes, max_depth: int) -> Any:
    """``json.loads``, refusing (``InvalidInputError``) JSON nested deeper than ``max_depth`` and invalid JSON
    (``ValueError``, as ``json.loads`` raises it)."""
    if too_deep(data, max_depth):
        raise InvalidInputError(f"JSON nested deeper than {max_depth} levels")
    return json.loads(data)
