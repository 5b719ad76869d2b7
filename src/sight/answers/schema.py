"""A ``response_schema``, checked once and compiled: its fields by property path, the nullable form the found
fields validate against, and the form the LLM is asked to answer in.

>>> schema = parse_schema({"type": "object", "properties": {
...     "serial_number": {"type": "string", "pattern": "SN-[A-Z0-9]{4}-[0-9]{4}"},
...     "plate": {"type": "object", "properties": {"voltage": {"type": "number"}}}}})
>>> [(f.path, f.pattern is not None) for f in schema.fields]
[('serial_number', True), ('plate.voltage', False)]
>>> schema.errors({"serial_number": None, "plate": {"voltage": "230 V"}})
["plate: {'voltage': '230 V'} is not valid under any of the given schemas"]
>>> schema.fits(schema.fields[1], "230 V"), schema.fits(schema.fields[1], 230)
(False, True)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from sight.answers.patterns import compile_pattern
from sight.errors import InvalidSchemaError

MAX_SCHEMA_BYTES = 16 * 1024
MAX_DEPTH = 8  # nested objects, the top one included
MAX_JSON_DEPTH = 64  # the schema document itself
MAX_INLINED_NODES = 20_000  # objects and arrays once local references are expanded
MAX_PATTERNS = 32
NULL = {"type": "null"}
REF_KEYS = ("$ref",)
# Dynamic references resolve at validation time against scopes the inlined schema no longer has.
REFUSED_KEYS = ("$dynamicRef", "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor")


@dataclass(frozen=True)
class FieldSpec:
    """One leaf property: its dotted ``path``, its schema and, for a string with a
    ``pattern``, the compiled pattern (RE2)."""

    path: str
    schema: dict[str, Any]
    pattern: Any = None


@dataclass(frozen=True, eq=False)
class ResponseSchema:
    raw: dict[str, Any]
    fields: tuple[FieldSpec, ...]

    def __reduce__(self) -> tuple[Any, ...]:  # crosses processes as its JSON (the Ray runtime)
        return parse_schema, (self.raw,)

    @cached_property
    def nullable(self) -> dict[str, Any]:
        """The schema with every property made nullable: what ``fields`` validate against."""
        return _nullable(self.raw)

    @cached_property
    def reply(self) -> dict[str, Any]:
        """What the LLM is asked to answer: the fields (nullable) and, per property path, the numbers of the
        OCR lines it read each value from. Without the patterns: Sight applies them itself, and a backend
        compiling a user's pattern into its decoding grammar could stall on it."""
        citations = {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer"}}}
        return {"type": "object", "properties": {"fields": _without_patterns(self.nullable), "citations": citations},
                "required": ["fields"]}

    @cached_property
    def _fields_validator(self) -> Any:
        return _validator(self.nullable)

    @cached_property
    def _reply_validator(self) -> Any:
        # Patterns are Sight's to apply (a value that fails one is replaced by the OCR's match, see fields.py), so
        # a reply is not refused for one.
        return _validator(self.reply)

    def errors(self, fields: Any) -> list[str]:
        """Why ``fields`` is not valid against the nullable schema (none: it is)."""
        return [_describe(e) for e in self._fields_validator.iter_errors(fields)]

    def fits(self, spec: FieldSpec, value: Any) -> bool:
        """Whether ``value`` is valid for the property ``spec`` (null always is)."""
        if value is None:
            return True
        validator = self._leaf_validators.get(spec.path)
        if validator is None:
            validator = self._leaf_validators[spec.path] = _validator(spec.schema)
        return bool(validator.is_valid(value))

    @cached_property
    def _leaf_validators(self) -> dict[str, Any]:
        return {}

    def reply_errors(self, reply: Any) -> list[str]:
        return [_describe(e) for e in self._reply_validator.iter_errors(reply)]


async def checked_schema(raw: Any, where: str | None = None) -> ResponseSchema:
    """:func:`parse_schema` in a worker thread: compiling a user's patterns may take a while, never the event
    loop's while (a schema seen before comes from the cache at once). ``where`` (``item 2``) prefixes the error."""
    import anyio

    try:
        return await anyio.to_thread.run_sync(parse_schema, raw)
    except InvalidSchemaError as exc:
        if where is None:
            raise
        raise InvalidSchemaError(f"{where}: {exc.message}") from None


def parse_schema(raw: Any) -> ResponseSchema:
    """``raw`` checked and compiled (cached by its JSON), or :class:`InvalidSchemaError`. Bounded: the checks
    that cost little (size, depth, pattern count) come first, and the expansion of references has a budget."""
    if not isinstance(raw, dict):
        raise InvalidSchemaError("response_schema must be a JSON object (a JSON Schema)")
    _check_depth(raw)
    try:
        text = json.dumps(raw, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidSchemaError(f"response_schema is not JSON: {exc}") from None
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise InvalidSchemaError(f"response_schema is {len(text.encode())} bytes; at most {MAX_SCHEMA_BYTES}")
    try:
        return _parse(text)
    except RecursionError:
        raise InvalidSchemaError("response_schema nests too deep once its references are expanded") from None


@lru_cache(maxsize=256)
def _parse(text: str) -> ResponseSchema:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    raw = json.loads(text)
    patterns: list[str] = []
    for key, value in _walk(raw):
        if key in REFUSED_KEYS:
            raise InvalidSchemaError(f"{key} is not supported in a response schema: use $ref ('#/$defs/...')")
        if key in REF_KEYS and not (isinstance(value, str) and value.startswith("#")):
            raise InvalidSchemaError(f"{key} {value!r}: only references inside the schema ('#/...') are allowed")
        if key == "pattern" and isinstance(value, str):
            patterns.append(value)
        if key == "patternProperties" and isinstance(value, dict):
            patterns.extend(p for p in value if isinstance(p, str))
    if len(set(patterns)) > MAX_PATTERNS:
        raise InvalidSchemaError(f"response_schema holds {len(set(patterns))} patterns; at most {MAX_PATTERNS}")
    try:  # the meta-schema, without its `format` checks: "regex" would test users' patterns with Python's re
        Draft202012Validator.check_schema(raw, format_checker=None)
    except SchemaError as exc:
        raise InvalidSchemaError(f"response_schema is not a valid JSON Schema: {_describe(exc)}") from None
    for pattern in dict.fromkeys(patterns):
        compile_pattern(pattern)
    raw = _inline(raw)
    if raw.get("type") != "object" or not isinstance(raw.get("properties"), dict) or not raw["properties"]:
        raise InvalidSchemaError('response_schema must describe an object: {"type": "object", "properties": {...}}')
    return ResponseSchema(raw, tuple(_fields(raw, ())))


def _inline(root: dict[str, Any]) -> dict[str, Any]:
    """``root`` with its local references (``#/$defs/...``, as a pydantic model's schema has them) replaced by
    what they name, so that nested objects are seen and made nullable; a reference that loops is refused."""
    def resolve(pointer: str) -> Any:
        node: Any = root
        for part in pointer.lstrip("#").strip("/").split("/") if pointer != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise InvalidSchemaError(f"$ref {pointer!r} names nothing in the schema")
            node = node[part]
        return node

    nodes = 0

    def walk(value: Any, seen: tuple[str, ...], depth: int) -> Any:
        nonlocal nodes
        if isinstance(value, dict | list):
            nodes += 1
            if nodes > MAX_INLINED_NODES or depth > MAX_JSON_DEPTH:
                raise InvalidSchemaError("response_schema's references expand past the size limit")
        if isinstance(value, list):
            return [walk(v, seen, depth + 1) for v in value]
        if not isinstance(value, dict):
            return value
        ref = value.get("$ref")
        if isinstance(ref, str):
            if ref in seen:
                raise InvalidSchemaError(f"$ref {ref!r} refers to itself: a response schema cannot be recursive")
            target = resolve(ref)
            rest = {k: v for k, v in value.items() if k != "$ref"}
            merged = {**target, **rest} if isinstance(target, dict) else target
            return walk(merged, (*seen, ref), depth)
        return {k: walk(v, seen, depth + 1) for k, v in value.items() if k not in ("$defs", "definitions")}

    inlined: dict[str, Any] = walk(root, (), 0)
    return inlined


def _fields(schema: dict[str, Any], keys: tuple[str, ...]) -> Iterator[FieldSpec]:
    if len(keys) >= MAX_DEPTH:
        raise InvalidSchemaError(f"response_schema nests objects more than {MAX_DEPTH} deep")
    for name, sub in schema["properties"].items():
        if not name or "." in name:
            raise InvalidSchemaError(f"property {name!r}: names must be non-empty and hold no '.' (paths are dotted)")
        path = (*keys, name)
        if not isinstance(sub, dict):
            yield FieldSpec(".".join(path), {})
        elif _is_object(sub):
            yield from _fields(sub, path)
        elif (inner := _optional_object(sub)) is not None:
            yield from _fields(inner, path)
        else:
            pattern = _pattern_of(sub)
            yield FieldSpec(".".join(path), sub, compile_pattern(pattern) if pattern is not None else None)


def _optional(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The ``x`` of ``anyOf: [x, null]`` (an optional property, as pydantic writes ``X | None``), else None."""
    options = schema.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and NULL in options:
        other = options[0] if options[1] == NULL else options[1]
        return other if isinstance(other, dict) else None
    return None


def _optional_object(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The object of ``anyOf: [object, null]`` (an optional nested model), if ``schema`` is one."""
    other = _optional(schema)
    return other if other is not None and _is_object(other) else None


def _pattern_of(schema: dict[str, Any]) -> str | None:
    """The pattern of a string property, or of the string in ``anyOf: [string, null]`` (an optional one)."""
    for candidate in (schema, _optional(schema)):
        if candidate is not None and isinstance(candidate.get("pattern"), str) and \
                _types(candidate) <= {"string", "null"}:
            return str(candidate["pattern"])
    return None


def _types(schema: dict[str, Any]) -> set[str]:
    kind = schema.get("type")
    return {kind} if isinstance(kind, str) else set(kind) if isinstance(kind, list) else set()


def _is_object(schema: dict[str, Any]) -> bool:
    return "object" in _types(schema) and isinstance(schema.get("properties"), dict) and bool(schema["properties"])


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    out = dict(schema)
    out["properties"] = {name: {"anyOf": [_nullable_property(sub), NULL]} for name, sub in schema["properties"].items()}
    return out


def _nullable_property(sub: Any) -> Any:
    if isinstance(sub, dict) and _is_object(sub):
        return _nullable(sub)
    if isinstance(sub, dict) and (inner := _optional_object(sub)) is not None:
        return _nullable(inner)
    return sub


def _without_patterns(schema: Any) -> Any:
    out = copy.deepcopy(schema)
    for node in _nodes(out):
        node.pop("pattern", None)
    return out


def _nodes(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for sub in value.values():
            yield from _nodes(sub)
    elif isinstance(value, list):
        for sub in value:
            yield from _nodes(sub)


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    for node in _nodes(value):
        yield from node.items()


def _check_depth(value: Any, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise InvalidSchemaError(f"response_schema nests more than {MAX_JSON_DEPTH} levels of JSON")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        _check_depth(child, depth + 1)


def _validator(schema: dict[str, Any]) -> Any:
    """A Draft 2020-12 validator whose ``pattern`` and ``patternProperties`` run on RE2: jsonschema's own use
    Python's ``re``, which a user's pattern can make backtrack for ever."""
    from jsonschema import Draft202012Validator, ValidationError, validators

    def pattern(validator: Any, patrn: str, instance: Any, _schema: Any) -> Iterator[ValidationError]:
        if validator.is_type(instance, "string") and not compile_pattern(patrn).search(instance):
            yield ValidationError(f"{instance!r} does not match {patrn!r}")

    def pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, _schema: Any
                           ) -> Iterator[ValidationError]:
        if not validator.is_type(instance, "object"):
            return
        for patrn, subschema in patterns.items():
            for key, value in instance.items():
                if compile_pattern(patrn).search(key):
                    yield from validator.descend(value, subschema, path=key, schema_path=patrn)

    kind = validators.extend(Draft202012Validator, {"pattern": pattern, "patternProperties": pattern_properties})
    return kind(schema)


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else str(error.message)
