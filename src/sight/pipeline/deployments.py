"""Modelbit-style deployments: call a built-in (detect, ocr, analyze, predict) or a user's Python function
by name and version/alias, one input or many ID-tagged rows at once.

User functions are declared in the registry file as ``module:function``; modules beside that file are
importable. Sync functions run in a worker thread, async ones on the loop.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from pydantic import ValidationError

from sight.answers.schema import checked_schema
from sight.engines.base import DetectOptions, Grounding
from sight.errors import InvalidInputError, NotFoundError, SightError, error_for_code
from sight.pipeline.items import ImageInput, WorkItem
from sight.pipeline.pipeline import Pipeline
from sight.pipeline.results import detections_json, llm_result, ocr_result
from sight.schemas import ItemOptions

BUILTINS = ("detect", "ocr", "analyze", "predict")
Fn = Callable[..., Awaitable[Any]]


def image_source(value: Any) -> ImageInput:
    if not isinstance(value, str) or not value:
        raise InvalidInputError("image must be a URL or a base64 string")
    if value.startswith(("http://", "https://")):
        return ImageInput.url(value)
    return ImageInput.base64(value)


def id_order(row_id: Any) -> tuple[int, Any]:
    """Numbers before strings, each in natural order."""
    return (0, row_id) if isinstance(row_id, int | float) else (1, str(row_id))


def item_options(value: Any, **defaults: Any) -> ItemOptions:
    if value is not None and not isinstance(value, dict):
        raise InvalidInputError("options must be a JSON object")
    try:
        return ItemOptions.model_validate({**defaults, **(value or {})})
    except ValidationError as exc:
        raise InvalidInputError(f"invalid options: {exc.errors()[0]['msg']}") from exc


def parse_call(body: Any) -> tuple[bool, list[Any]]:
    """(is_batch, rows): rows are ``[id, *args]`` for a batch, else one ``args`` list."""
    if not isinstance(body, dict) or "data" not in body:
        raise InvalidInputError('the body must be a JSON object {"data": ...}')
    data, forced = body["data"], body.get("batch")
    if forced is not None and not isinstance(forced, bool):
        raise InvalidInputError('"batch" must be true or false')
    looks_batch = isinstance(data, list) and bool(data) and all(
        isinstance(row, list) and row and isinstance(row[0], str | int | float) and not isinstance(row[0], bool)
        for row in data
    )
    if not (forced if forced is not None else looks_batch):
        return False, [data if isinstance(data, list) else [data]]
    if not looks_batch:
        raise InvalidInputError("batch data must be a list of [id, arg, ...] rows")
    ids = [row[0] for row in data]
    if len(set(map(json.dumps, ids))) != len(ids):
        raise InvalidInputError("batch ids must be unique")
    return True, list(data)


@dataclass(frozen=True, slots=True)
class DeploymentCall:
    """A call resolved and read, not yet run: which deployment, its function, and its rows (``[id, *args]`` for
    a batch, else one ``args`` list). What it will run is known before it runs (admission, the quota)."""

    name: str
    fn: Fn
    is_batch: bool
    rows: list[Any]

    @property
    def runs(self) -> int:
        """How many times the function will run: once per row of a batch, once for a single call."""
        return len(self.rows) if self.is_batch else 1

    def arguments(self) -> list[list[Any]]:
        """Each run's arguments."""
        return [list(row[1:]) for row in self.rows] if self.is_batch else [list(self.rows[0])]


class Deployments:
    def __init__(self, pipeline: Pipeline, concurrency: int) -> None:
        self.pipeline = pipeline
        self.concurrency = concurrency
        self._functions: dict[str, Callable[..., Any]] = {}
        self._catalog: object = None  # the catalog the cached functions were imported for
        self._imported: set[str] = set()  # modules of user functions imported for this catalog
        self._stale: set[str] = set()  # imported for an earlier catalog: imported again on next use
        registry_file = pipeline.settings.registry.path
        if registry_file is not None and str(registry_file.parent.resolve()) not in sys.path:
            sys.path.insert(0, str(registry_file.parent.resolve()))

    def resolve(self, name: str, ref: str, request_id: str) -> Fn:
        if name in BUILTINS:
            if ref not in {"latest", "1"}:
                raise NotFoundError(f"built-in deployment {name!r} has only version 1 (latest)")
            return getattr(self, f"_builtin_{name}")
        versions = self.pipeline.hub.current.catalog.deployments.get(name)
        if versions is None:
            raise NotFoundError(f"no deployment named {name!r}")
        try:
            entry = versions.resolve(ref, request_id)
        except SightError as exc:
            raise NotFoundError(f"deployment {name!r}: {exc.message}") from exc
        fn = self._function(entry.function)
        if inspect.iscoroutinefunction(fn):
            return fn

        async def in_thread(*args: Any) -> Any:
            return await anyio.to_thread.run_sync(partial(fn, *args))

        return in_thread

    def _function(self, spec: str) -> Callable[..., Any]:
        """The user function ``module:function``. After a reload of the registry (a new catalog), every module
        of a user function is imported afresh on its next call: "edit and reload" runs the edited code."""
        catalog = self.pipeline.hub.current.catalog
        if catalog is not self._catalog:
            self._stale |= self._imported  # each is imported again when one of its functions is next called
            self._imported = set()
            self._catalog = catalog
            self._functions.clear()
            importlib.invalidate_caches()
        if spec not in self._functions:
            name, _, attr = spec.partition(":")
            try:
                module = importlib.import_module(name)
                if name in self._stale:
                    module = importlib.reload(module)
                    self._stale.discard(name)
                self._functions[spec] = getattr(module, attr)
            except (ImportError, AttributeError, SyntaxError) as exc:
                raise NotFoundError(f"deployment function {spec} cannot be imported: {exc}") from exc
            self._imported.add(name)
        return self._functions[spec]

    def prepare(self, name: str, ref: str, body: Any, request_id: str) -> DeploymentCall:
        """Resolve the deployment (``NotFoundError``) and read the body (``InvalidInputError``), running nothing."""
        fn = self.resolve(name, ref, request_id)
        is_batch, rows = parse_call(body)
        return DeploymentCall(name, fn, is_batch, rows)

    async def call(self, name: str, ref: str, body: Any, request_id: str) -> dict[str, Any]:
        return await self.run(self.prepare(name, ref, body, request_id))

    async def run(self, call: DeploymentCall) -> dict[str, Any]:
        fn, rows = call.fn, call.rows
        if not call.is_batch:
            return {"data": _jsonable(await fn(*rows[0]))}
        slots = asyncio.Semaphore(self.concurrency)

        async def run_row(row: list[Any]) -> tuple[Any, Any, dict[str, str] | None]:
            async with slots:
                try:
                    return row[0], _jsonable(await fn(*row[1:])), None
                except SightError as exc:
                    return row[0], None, exc.to_dict()
                except Exception as exc:  # the user's function failed on this row only
                    return row[0], None, {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}

        done = sorted(await asyncio.gather(*(run_row(r) for r in rows)), key=lambda r: id_order(r[0]))
        out: dict[str, Any] = {"data": [[row_id, result] for row_id, result, _ in done]}
        errors = [[row_id, error] for row_id, _, error in done if error is not None]
        if errors:
            out["errors"] = errors
        return out

    # -- built-ins: image is a URL or base64 string --------------------------------------------------

    async def _builtin_detect(self, image: Any, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        opts = item_options(options, is_yolo=True)
        engines = self.pipeline.hub.current
        picture = await self.pipeline.load_picture(image_source(image), {})
        _entry, seen = await self.pipeline.detect(
            engines, picture, (options or {}).get("model") or opts.yolo_model,
            DetectOptions(conf=opts.conf, iou=opts.iou, classes=opts.classes))
        return detections_json(seen.value)

    async def _builtin_ocr(self, image: Any) -> dict[str, Any]:
        picture = await self.pipeline.load_picture(image_source(image), {})
        return ocr_result((await self.pipeline.read_text(self.pipeline.hub.current, picture)).value).model_dump()

    async def _builtin_analyze(self, image: Any, query: Any = None, response_schema: Any = None) -> dict[str, Any]:
        """``[image, query]``, or ``[image, query, response_schema]`` for fields with evidence (API.md section 6):
        the LLM's answer, and with a schema the fields, evidence and verified (OCR runs to check them)."""
        if query is not None and not isinstance(query, str):
            raise InvalidInputError("query must be text")
        if response_schema is not None:
            await checked_schema(response_schema)  # invalid_schema before any work
            options = ItemOptions(is_llm=True, response_schema=response_schema)
            result = await self.pipeline.run_item(WorkItem(0, None, image_source(image), options), query)
            if result.error is not None:
                raise error_for_code(result.error.code, result.error.message)
            assert result.llm is not None
            return {"answer": result.llm.answer, "model": result.llm.model, "structured": result.llm.structured,
                    **result.model_dump(mode="json", include={"fields", "evidence", "verified"})}
        picture = await self.pipeline.load_picture(image_source(image), {})
        answer = await self.pipeline.analyze(self.pipeline.hub.current, picture, query, Grounding(), None)
        return llm_result(answer).model_dump(include={"answer", "model"})

    async def _builtin_predict(self, image: Any, options: dict[str, Any] | None = None) -> dict[str, Any]:
        opts = item_options(options) if options else ItemOptions(is_yolo=True)
        if opts.response_schema is not None:
            await checked_schema(opts.response_schema)  # invalid_schema before any work
        query = (options or {}).get("query")
        result = await self.pipeline.run_item(WorkItem(0, None, image_source(image), opts), query)
        return result.model_dump(mode="json", by_alias=True)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise SightError(f"the deployment returned something that is not JSON: {type(value).__name__}") from exc
    return value
