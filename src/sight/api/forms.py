"""Turn the two request dialects (v1 multipart, v2 JSON) into work items for the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from sight.answers.schema import checked_schema
from sight.api import bodies
from sight.api.deps import authenticate
from sight.errors import InvalidInputError, InvalidSchemaError, PayloadTooLargeError
from sight.pipeline.items import ImageInput, WorkItem
from sight.schemas import ItemOptions, PredictRequestV2
from sight.storage.keys import Principal

FORM_FIELD_BYTES = 1024 * 1024  # a metadata/query field; files are not bound by this


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()[:5]
    )


@dataclass
class PredictCall:
    """A parsed prediction request. ``form`` (v1) holds spooled uploads to close when done."""

    items: list[WorkItem]
    query: str | None
    api_key: str | None
    form: FormData | None = None
    principal: Principal | None = None  # who sent it, when known already (v1: checked before its metadata)
    on_close: list[Callable[[], None]] = field(default_factory=list)

    async def close(self) -> None:
        for release in self.on_close:
            release()
        self.on_close.clear()
        if self.form is not None:
            await self.form.close()


def with_schemas(items: list[WorkItem], request_wide: object | None) -> list[WorkItem]:
    """Give ``request_wide`` to the items that name no response schema of their own."""
    for item in items:
        if item.options.response_schema is None and request_wide is not None:
            item.options = item.options.model_copy(update={"response_schema": request_wide})
    return items


async def check_schemas(call: PredictCall) -> PredictCall:
    """Check every item's response schema (off the event loop): a bad one is 400 ``invalid_schema`` before any
    work."""
    for item in call.items:
        if item.options.response_schema is not None:
            await checked_schema(item.options.response_schema, f"item {item.index}")
    return call


def _text_field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a text field, not a file")
    return value


async def read_v1(request: Request, max_files: int, max_json_depth: int) -> PredictCall:
    """Parse the multipart body: ``files`` with parallel ``metadata`` JSON strings. The caller's key (header or
    ``api_key`` field) is checked before any ``metadata`` is decoded."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidInputError("expected a multipart/form-data body with files and metadata")
    try:
        form = await request.form(max_files=max_files, max_fields=max_files + 16, max_part_size=FORM_FIELD_BYTES)
    except HTTPException as exc:
        if exc.status_code == 413:  # the body cap, met while a chunked body streamed in (BodyLimitMiddleware)
            raise PayloadTooLargeError(str(exc.detail)) from exc
        if "Too many" in str(exc.detail):
            raise PayloadTooLargeError(f"{exc.detail} (at most {max_files} files a request)") from exc
        raise InvalidInputError(f"malformed multipart body: {exc.detail}") from exc
    try:
        principal = await authenticate(request, _text_field(form, "api_key"))
        call = await check_schemas(_items_from_form(form, max_json_depth))
    except BaseException:
        await form.close()
        raise
    call.principal = principal
    return call


def _items_from_form(form: FormData, max_json_depth: int) -> PredictCall:
    files = form.getlist("files")
    metadata = form.getlist("metadata")
    if not files:
        raise InvalidInputError("no files: send one or more 'files' parts")
    if not all(isinstance(f, UploadFile) for f in files):
        raise InvalidInputError("every 'files' part must be a file upload")
    if len(metadata) != len(files):
        raise InvalidInputError(f"got {len(files)} files but {len(metadata)} metadata entries; send one per file")
    items: list[WorkItem] = []
    for index, (upload, raw) in enumerate(zip(files, metadata, strict=True)):
        assert isinstance(upload, UploadFile)
        if not isinstance(raw, str):
            raise InvalidInputError(f"metadata[{index}] must be a JSON text field")
        try:
            parsed = bodies.loads(raw, max_json_depth)
        except ValueError as exc:
            raise InvalidInputError(f"metadata[{index}] is not valid JSON") from exc
        except InvalidInputError as exc:
            raise InvalidInputError(f"metadata[{index}]: {exc.message}") from exc
        if not isinstance(parsed, dict):
            raise InvalidInputError(f"metadata[{index}] must be a JSON object")
        try:
            options = ItemOptions.model_validate(parsed)
        except ValidationError as exc:
            raise InvalidInputError(f"metadata[{index}]: {_describe(exc)}") from exc
        items.append(WorkItem(index, upload.filename, ImageInput(upload=upload), options))
    request_wide = None
    if (raw_schema := _text_field(form, "response_schema")) is not None:
        try:
            request_wide = bodies.loads(raw_schema, max_json_depth)
        except ValueError as exc:
            raise InvalidSchemaError("response_schema is not valid JSON") from exc
        except InvalidInputError as exc:  # nested too deep
            raise InvalidSchemaError(f"response_schema: {exc.message}") from None
    return PredictCall(with_schemas(items, request_wide), _text_field(form, "query"), _text_field(form, "api_key"),
                       form)


async def read_v2(body: PredictRequestV2, max_files: int) -> PredictCall:
    if len(body.data) > max_files:
        raise PayloadTooLargeError(f"{len(body.data)} items; at most {max_files} a request")
    items: list[WorkItem] = []
    for index, item in enumerate(body.data):
        options = ItemOptions.model_validate(item.model_dump(include=set(ItemOptions.model_fields)))
        source = ImageInput(ref=item)  # image_url or image_base64: checked per item as it loads
        items.append(WorkItem(index, item.filename or _name_from_url(item.image_url), source, options))
    return await check_schemas(PredictCall(with_schemas(items, body.response_schema), body.query, body.api_key))


def _name_from_url(url: str | None) -> str | None:
    if not url:
        return None
    tail = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return tail or None
