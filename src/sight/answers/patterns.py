"""Users' regular expressions, run in linear time: RE2 (``google-re2``), never Python's backtracking ``re``.

>>> find = compile_pattern("SN-[A-Z0-9]{4}-[0-9]{4}")
>>> find.search("S/N: SN-7KD9-0415-QX").group(0)
'SN-7KD9-0415'
>>> compile_pattern("(a)\\\\1")  # a backreference cannot run in linear time
Traceback (most recent call last):
...
sight.errors.InvalidSchemaError: pattern '(a)\\\\1' cannot run in linear time (RE2): invalid escape sequence: \\1
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sight.errors import InvalidSchemaError

MAX_PATTERN_CHARS = 1000
# RE2's memory for one compiled pattern: a pattern past it is refused rather than slowed down.
MAX_PATTERN_MEMORY = 1 << 20


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> Any:
    """``pattern`` compiled by RE2, or :class:`InvalidSchemaError` when RE2 cannot run it (backreferences,
    lookaround: what needs backtracking) or it is too large."""
    import re2

    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidSchemaError(f"a pattern is {len(pattern)} characters; at most {MAX_PATTERN_CHARS}")
    options = re2.Options()
    options.log_errors = False
    options.max_mem = MAX_PATTERN_MEMORY
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise InvalidSchemaError(f"pattern {pattern!r} cannot run in linear time (RE2): {reason}") from None
