"""Dotted property paths (``plate.serial``) into a fields object: an object-valued property is one value, not
more paths (property names hold no ".", see schema.py).

>>> fields: dict = {}
>>> put_at(fields, "plate.serial", "SN-1")
>>> fields, value_at(fields, "plate.serial"), value_at(fields, "plate.year"), value_at(None, "plate")
({'plate': {'serial': 'SN-1'}}, 'SN-1', None, None)
"""

from __future__ import annotations

from typing import Any


def value_at(fields: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(fields, dict):
            return None
        fields = fields.get(key)
    return fields


def put_at(fields: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        fields = fields.setdefault(key, {})
    fields[last] = value
