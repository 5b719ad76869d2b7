"""What the sync and async clients share: settings, request building, response parsing, the retry rule and
error mapping. No I/O here: the clients send the ``Call`` built here and read files themselves."""

from __future__ import annotations

import base64
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeAlias, TypedDict
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from sight.client.images import Upload
from sight.errors import (
    AuthenticationError,
    ConflictError,
    DeploymentRowsError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RateLimitedError,
    SightError,
    StageTimeoutError,
    UpstreamError,
    error_for_code,
)
from sight.schemas import (
    ItemOptions,
    ItemResult,
    MergedAnswer,
    PredictBatchResponse,
    PredictInput,
    PredictionSpec,
    StreamComplete,
    StreamDone,
    StreamError,
    StreamProcessing,
    VisionPredict,
)

DEFAULT_URL = "http://127.0.0.1:8000"
# Reads may wait long: a request of many LLM items answers once they all have (the server bounds each stage).
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=10.0)
PREDICT = "/api/v1/inference/predict"
StreamEvent: TypeAlias = StreamProcessing | StreamDone | StreamError | StreamComplete
EVENTS: dict[str, type[StreamEvent]] = {
    "processing": StreamProcessing, "done": StreamDone, "error": StreamError, "complete": StreamComplete}
# Used only when an error answer carries no {"detail": {"code", "message"}} (a proxy in front of Sight).
BY_STATUS: dict[int, type[SightError]] = {
    400: InvalidInputError, 401: AuthenticationError, 403: ForbiddenError, 404: NotFoundError, 409: ConflictError,
    413: PayloadTooLargeError, 429: RateLimitedError, 502: UpstreamError, 503: OverloadedError, 504: StageTimeoutError,
}
FLAGS = {"yolo": "is_yolo", "ocr": "is_ocr", "llm": "is_llm"}
# A response schema as the client takes it: a JSON Schema dict, or a pydantic model class (then ``parsed``).
SchemaLike: TypeAlias = dict[str, Any] | type[BaseModel]


def schema_json(schema: SchemaLike | None) -> dict[str, Any] | None:
    """``schema`` as the JSON Schema the server takes."""
    if schema is None or isinstance(schema, dict):
        return schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_json_schema()
    raise InvalidInputError("response_schema must be a JSON Schema dict or a pydantic model class")


def bind_schema(found: PredictBatchResponse | StreamEvent, schema: SchemaLike | None) -> None:
    """Let ``found``'s results read their fields as ``schema``'s class (``.parsed``), when it is one."""
    if not isinstance(schema, type):
        return
    results: list[ItemResult | MergedAnswer] = []
    if isinstance(found, PredictBatchResponse):
        results = [found.result, *found.result.items]
    elif isinstance(found, StreamDone | StreamError) and found.result is not None:
        results = [found.result]
    elif isinstance(found, StreamComplete):
        results = [found]
    for result in results:
        result._parse_as = schema


class ItemFlags(TypedDict, total=False):
    """Options for every image of a call, as keyword arguments: ``predict(images, ocr=True, conf=0.5)``."""

    yolo: bool
    ocr: bool
    llm: bool
    yolo_model: str
    conf: float
    iou: float
    classes: list[str | int]
    llm_model: str


def env_defaults() -> tuple[str, str | None]:
    """The server URL and API key a client takes when given none: ``SIGHT_CLIENT__URL`` (else the local server),
    ``SIGHT_API_KEY`` or ``SIGHT_CLIENT__API_KEY`` (the CLI's setting)."""
    env = os.environ
    return (env.get("SIGHT_CLIENT__URL") or DEFAULT_URL,
            env.get("SIGHT_API_KEY") or env.get("SIGHT_CLIENT__API_KEY") or None)


@dataclass
class Call:
    """One HTTP request, as the clients hand it to httpx."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, Any] | None = None
    files: list[tuple[str, tuple[str, bytes]]] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def request_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"params": self.params, "headers": self.headers}
        if self.json is not None:
            args["json"] = self.json
        if self.data is not None:
            args["data"] = self.data
        if self.files is not None:
            args["files"] = self.files
        return args


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the ``Retry-After`` header asks for (a number or an HTTP date); None without one."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def error_from(response: httpx.Response) -> SightError:
    """The ``SightError`` subclass an error answer stands for (its body must have been read)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, dict) and "code" in detail:
        exc = error_for_code(str(detail["code"]), str(detail.get("message", "")))
    else:
        cls = BY_STATUS.get(response.status_code, SightError)
        exc = cls(f"HTTP {response.status_code}: {response.text[:200]}")
    if isinstance(exc, OverloadedError):
        wait = retry_after(response)
        exc.retry_after = exc.retry_after if wait is None else math.ceil(wait)
    return exc


@contextmanager
def translated() -> Iterator[None]:
    """httpx's own errors (no connection, timeouts) as ``SightError``s: one tree for the caller to catch."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise StageTimeoutError(f"the server did not answer in time ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise UpstreamError(f"cannot reach the server: {exc}") from exc


def parse_event(line: str) -> StreamEvent:
    """One NDJSON line of a prediction stream as its typed event."""
    obj = json.loads(line)
    kind = EVENTS.get(str(obj.get("status"))) if isinstance(obj, dict) else None
    if kind is None:
        raise SightError(f"unexpected stream line: {line[:200]}")
    return kind.model_validate(obj)


def page_params(limit: int | None, token: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if limit is not None:
        params["limit"] = limit
    if token:
        params["pagination_token"] = token
    return params


def segment(value: str) -> str:
    return quote(value, safe="")


def b64(content: bytes) -> str:
    return base64.b64encode(content).decode()


def item_options(count: int, options: ItemOptions | Sequence[ItemOptions] | None, query: str | None,
                 flags: ItemFlags) -> list[ItemOptions]:
    """One ``ItemOptions`` per image. ``options``: one for all images or one per image; None: detection, plus
    the LLM when a query is given. ``flags`` (``yolo``, ``ocr``, ``llm``, ``yolo_model``, ``conf``, ...) that are
    not None set that option on every image."""
    if options is None or isinstance(options, ItemOptions):
        per: list[ItemOptions | None] = [options] * count
    else:
        per = list(options)
        if len(per) != count:
            raise InvalidInputError(f"{count} images but {len(per)} options: give one for all or one per image")
    unknown = set(flags) - set(ItemFlags.__annotations__)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    overrides = {FLAGS.get(k, k): v for k, v in flags.items() if v is not None}
    out = []
    for opts in per:
        base = opts if opts is not None else ItemOptions(is_yolo=True, is_llm=bool(query))
        try:
            out.append(ItemOptions.model_validate({**base.model_dump(), **overrides}) if overrides else base)
        except ValidationError as exc:
            raise InvalidInputError(f"invalid options: {exc.errors()[0]['msg']}") from exc
    return out


def predict_call(uploads: Sequence[Upload], options: Sequence[ItemOptions], query: str | None,
                 stream: bool, response_schema: SchemaLike | None = None) -> Call:
    """Files go as multipart (v1); once any image is a URL, every image goes in one v2 JSON body.
    ``response_schema``: the request's, for every image whose options name none."""
    schema = schema_json(response_schema)
    path = PREDICT + ("/stream" if stream else "/batch")
    if any(u.url for u in uploads):
        items = []
        for u, opts in zip(uploads, options, strict=True):
            item: dict[str, Any] = opts.model_dump(mode="json", exclude_none=True)
            item.update({"image_url": u.url} if u.url else {"image_base64": b64(u.content or b"")})
            if u.filename:
                item["filename"] = u.filename
            items.append(item)
        body: dict[str, Any] = {"data": items}
        if query:
            body["query"] = query
        if schema is not None:
            body["response_schema"] = schema
        return Call("POST", path + "/v2", json=body)
    data: dict[str, Any] = {"metadata": [o.model_dump_json(exclude_none=True) for o in options]}
    if query:
        data["query"] = query
    if schema is not None:
        data["response_schema"] = json.dumps(schema)
    files = [("files", (u.filename or f"image-{i}", u.content or b"")) for i, u in enumerate(uploads)]
    return Call("POST", path, data=data, files=files)


def add_requests_call(batch_id: str, requests: Sequence[VisionPredict | tuple[str | None, VisionPredict]]) -> Call:
    pairs = [r if isinstance(r, tuple) else (None, r) for r in requests]
    body = {"batch_requests": [
        {**({"batch_request_id": rid} if rid else {}),
         "batch_request": {"vision_predict": vp.model_dump(mode="json", exclude_none=True)}}
        for rid, vp in pairs
    ]}
    return Call("POST", f"/v1/batches/{segment(batch_id)}/requests", json=body)


def deployment_call(name: str, ref: str | int, data: Any, batch: bool | None) -> Call:
    body: dict[str, Any] = {"data": data}
    if batch is not None:
        body["batch"] = batch
    return Call("POST", f"/v1/{segment(name)}/{segment(str(ref))}", json=body)


def deployment_data(body: Any) -> Any:
    """The ``data`` of a deployment's answer; failed batch rows raise ``DeploymentRowsError``."""
    errors = body.get("errors")
    if errors:
        raise DeploymentRowsError(body["data"], {row_id: error_for_code(str(e.get("code")), str(e.get("message")))
                                                 for row_id, e in errors})
    return body["data"]


def multi_predict_call(models: Sequence[str | PredictionSpec], upload: Upload | None, shared: dict[str, Any],
                       request_id: str | None) -> Call:
    specs = [m if isinstance(m, PredictionSpec) else PredictionSpec(model_name=m) for m in models]
    fields = {k: v for k, v in shared.items() if v is not None}
    if upload is not None:
        fields.update({"image_url": upload.url} if upload.url else {"image_base64": b64(upload.content or b"")})
    body: dict[str, Any] = {"predictions": [s.model_dump(mode="json", exclude_none=True) for s in specs]}
    if fields:
        body["input"] = PredictInput.model_validate(fields).model_dump(mode="json", exclude_none=True)
    return Call("POST", "/v1/predict", json=body, headers={"X-Request-ID": request_id} if request_id else {})


class ClientBase:
    """Settings both clients hold, and the retry rule.

    Retries: a 429 or 503 that carries ``Retry-After`` is Sight refusing before doing any work (quota used up,
    at capacity), so every call may be repeated after that wait: at most ``max_attempts`` tries in all, and
    never a wait longer than ``max_retry_wait`` seconds (then the error is raised at once, ``retry_after`` set).
    """

    def __init__(self, url: str | None, api_key: str | None, *, max_attempts: int, max_retry_wait: float) -> None:
        default_url, default_key = env_defaults()
        key = api_key or default_key
        if not key:
            raise AuthenticationError("no API key: pass api_key=... or set SIGHT_API_KEY")
        self.url = (url or default_url).rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"}
        self.max_attempts = max(1, max_attempts)
        self.max_retry_wait = max_retry_wait

    def retry_delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before trying ``response``'s request again, or None to raise its error now."""
        if response.status_code not in (429, 503) or attempt >= self.max_attempts:
            return None
        wait = retry_after(response)
        if wait is None or wait > self.max_retry_wait:
            return None
        return wait
