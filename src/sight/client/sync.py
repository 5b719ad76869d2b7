"""The blocking client (httpx). The CLI is built on it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Unpack

import httpx

from sight.client import base
from sight.client.base import DEFAULT_TIMEOUT, Call, ClientBase, ItemFlags, SchemaLike, StreamEvent, translated
from sight.client.images import ImageLike, Upload, as_list, source_of
from sight.errors import StageTimeoutError, UpstreamError
from sight.schemas import (
    BatchList,
    BatchPublic,
    BatchRequestList,
    BatchResultEntry,
    BatchResultList,
    ItemOptions,
    ModelDetail,
    ModelList,
    MultiPredictResponse,
    PredictBatchResponse,
    PredictionSpec,
    StreamComplete,
    VisionPredict,
)


class Client(ClientBase):
    """Talks to one Sight server with one API key: predictions, batches, deployments and models.

    ``url`` defaults to ``SIGHT_CLIENT__URL`` or ``http://127.0.0.1:8000``, ``api_key`` to ``SIGHT_API_KEY`` or
    ``SIGHT_CLIENT__API_KEY``. Errors raise the ``sight.errors`` class of their ``code``. Pass ``transport`` to
    reach an app in process (``httpx.ASGITransport``).

    >>> with Client(server_url, api_key=api_key) as sight:
    ...     answer = sight.predict([image, label], [ItemOptions(is_yolo=True), ItemOptions(is_ocr=True)])
    ...     face, text = answer.result.items
    ...     print(face.yolo.detections[0].name, "|", text.ocr.text.splitlines()[0])
    FACE_FEMALE | Serial No: SN-4X7Q-2291-B
    """

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, max_attempts: int = 3,
                 max_retry_wait: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(url, api_key, max_attempts=max_attempts, max_retry_wait=max_retry_wait)
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call, stream: bool = False) -> httpx.Response:
        """Send ``call``, again after a refusal's Retry-After (see ``ClientBase``); raise its error otherwise."""
        attempt = 1
        while True:
            with translated():
                response = self._http.send(self._http.build_request(call.method, call.path, **call.request_args()),
                                           stream=stream)
                if response.status_code < 400:
                    return response
                response.read()
                response.close()
            delay = self.retry_delay(response, attempt)
            if delay is None:
                raise base.error_from(response)
            attempt += 1
            time.sleep(delay)

    def _json(self, call: Call) -> Any:
        return self._send(call).json()

    def _uploads(self, images: Sequence[ImageLike]) -> list[Upload]:
        out = []
        for i, image in enumerate(images):
            source = source_of(image, i)
            out.append(Upload(source.name, source.read_bytes()) if isinstance(source, Path) else source)
        return out

    # -- prediction API ------------------------------------------------------------------------------

    def predict(self, images: ImageLike | Sequence[ImageLike],
                options: ItemOptions | Sequence[ItemOptions] | None = None, *, query: str | None = None,
                response_schema: SchemaLike | None = None, **flags: Unpack[ItemFlags]) -> PredictBatchResponse:
        """Run one prediction request over ``images`` (paths, bytes, http(s) URLs, PIL images; one or a list).

        ``options`` is one ``ItemOptions`` for every image or one per image; without it each image gets
        detection, and the LLM too when ``query`` is given. Keyword flags (``yolo``, ``ocr``, ``llm``,
        ``yolo_model``, ``conf``, ``iou``, ``classes``, ``llm_model``) set that option on every image.
        ``response_schema`` (a JSON Schema dict or a pydantic model class) asks for fields with evidence: each
        item and the result have ``fields``, ``evidence``, ``verified`` and, for a class, ``parsed``.
        Items that fail come back with ``status == "error"`` and their ``error``; they raise nothing."""
        call = self._predict_call(images, options, query, False, flags, response_schema)
        found = PredictBatchResponse.model_validate(self._json(call))
        base.bind_schema(found, response_schema)
        return found

    def predict_stream(self, images: ImageLike | Sequence[ImageLike],
                       options: ItemOptions | Sequence[ItemOptions] | None = None, *, query: str | None = None,
                       response_schema: SchemaLike | None = None,
                       **flags: Unpack[ItemFlags]) -> Iterator[StreamEvent]:
        """Like ``predict``, yielding each event as its line arrives: ``StreamProcessing`` when an item starts,
        ``StreamDone`` or ``StreamError`` as it ends (in finishing order), ``StreamComplete`` last.
        Closing the iterator early hangs up, which cancels the server's pending work."""
        call = self._predict_call(images, options, query, True, flags, response_schema)
        response = self._send(call, stream=True)
        complete = False
        try:
            with translated():
                for line in response.iter_lines():
                    if line.strip():
                        event = base.parse_event(line)
                        base.bind_schema(event, response_schema)
                        complete = isinstance(event, StreamComplete)
                        yield event
        finally:
            response.close()
        if not complete:
            raise UpstreamError("the stream ended before its complete line")

    def _predict_call(self, images: ImageLike | Sequence[ImageLike],
                      options: ItemOptions | Sequence[ItemOptions] | None, query: str | None, stream: bool,
                      flags: ItemFlags, response_schema: SchemaLike | None = None) -> Call:
        uploads = self._uploads(as_list(images))
        return base.predict_call(uploads, base.item_options(len(uploads), options, query, flags), query, stream,
                                 response_schema)

    # -- batches -------------------------------------------------------------------------------------

    def create_batch(self, name: str, idempotency_key: str | None = None) -> BatchPublic:
        """Create an empty batch; the same ``idempotency_key`` again returns the same batch."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return BatchPublic.model_validate(self._json(Call("POST", "/v1/batches", json={"name": name},
                                                          headers=headers)))

    def list_batches(self, limit: int | None = None, token: str | None = None) -> BatchList:
        """One page of this team's batches, newest first; pass ``pagination_token`` back as ``token``."""
        return BatchList.model_validate(self._json(Call("GET", "/v1/batches", base.page_params(limit, token))))

    def get_batch(self, batch_id: str) -> BatchPublic:
        return BatchPublic.model_validate(self._json(Call("GET", f"/v1/batches/{base.segment(batch_id)}")))

    def add_requests(self, batch_id: str,
                     requests: Sequence[VisionPredict | tuple[str | None, VisionPredict]]) -> list[str]:
        """Add requests, each alone (its id chosen by the server) or as ``(batch_request_id, request)``;
        returns their ids in order. Re-adding an id raises ``ConflictError``."""
        return list(self._json(base.add_requests_call(batch_id, requests))["batch_request_ids"])

    def list_requests(self, batch_id: str, limit: int | None = None, token: str | None = None) -> BatchRequestList:
        return BatchRequestList.model_validate(self._json(Call(
            "GET", f"/v1/batches/{base.segment(batch_id)}/requests", base.page_params(limit, token))))

    def results_page(self, batch_id: str, limit: int | None = None, token: str | None = None) -> BatchResultList:
        return BatchResultList.model_validate(self._json(Call(
            "GET", f"/v1/batches/{base.segment(batch_id)}/results", base.page_params(limit, token))))

    def iter_results(self, batch_id: str, page_size: int = 500) -> Iterator[BatchResultEntry]:
        """Every result available now, each once (follows tokens until the current end)."""
        token: str | None = None
        while True:
            page = self.results_page(batch_id, page_size, token)
            yield from page.results
            if page.pagination_token is None or not page.results:
                return
            token = page.pagination_token

    def wait(self, batch_id: str, *, on_progress: Callable[[BatchPublic], object] | None = None,
             poll: float = 1.0, timeout: float | None = None) -> BatchPublic:
        """Poll every ``poll`` seconds until the batch is no longer ``processing``; return it. ``on_progress``
        gets the batch at every poll; past ``timeout`` seconds raise ``StageTimeoutError``.

        >>> with Client(server_url, api_key=api_key) as sight:
        ...     batch = sight.create_batch("wait for me")
        ...     _ = sight.add_requests(batch.batch_id, [VisionPredict(image_base64=label_base64, is_ocr=True)])
        ...     ended = sight.wait(batch.batch_id, poll=0.1, on_progress=lambda b: None)
        ...     print(ended.status, ended.state.num_success)
        ended 1
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = self.get_batch(batch_id)
            if on_progress is not None:
                on_progress(batch)
            if batch.status != "processing":
                return batch
            if deadline is not None and time.monotonic() >= deadline:
                raise StageTimeoutError(f"batch {batch_id} still processing after {timeout} s")
            time.sleep(poll)

    def cancel_batch(self, batch_id: str) -> BatchPublic:
        """Cancel pending work; finished results stay. Idempotent."""
        return BatchPublic.model_validate(self._json(Call("POST", f"/v1/batches/{base.segment(batch_id)}:cancel")))

    # -- deployments ---------------------------------------------------------------------------------

    def call(self, name: str, ref: str | int = "latest", data: Any = None, *, batch: bool | None = None) -> Any:
        """Call deployment ``name`` at ``ref`` (``latest``, a version or an alias) and return its ``data``.

        ``data`` is the deployment's arguments (a list, or one value), or ID-tagged rows ``[[id, arg, ...], ...]``
        whose results come back as ``[[id, result], ...]`` sorted by id. When rows fail, ``DeploymentRowsError``
        holds every row (``.data``, failed ones ``None``) and each failure by id (``.errors``).

        >>> from sight.client import DeploymentRowsError
        >>> with Client(server_url, api_key=api_key) as sight:
        ...     print(sight.call("ocr", "latest", [label_base64])["text"].splitlines()[0])
        ...     rows = sight.call("ocr", "latest", [[2, label_base64], [1, label_base64]])
        ...     print([row_id for row_id, _ in rows])
        ...     try:
        ...         sight.call("ocr", "latest", [[2, label_base64], ["b", "bm90IGFuIGltYWdl"]])
        ...     except DeploymentRowsError as failed:
        ...         print([row_id for row_id, _ in failed.data], failed.errors["b"].code)
        Serial No: SN-4X7Q-2291-B
        [1, 2]
        [2, 'b'] invalid_image
        """
        return base.deployment_data(self._json(base.deployment_call(name, ref, data, batch)))

    # -- models --------------------------------------------------------------------------------------

    def list_models(self) -> ModelList:
        """Every declared model version with its state, and the default vision LLM."""
        return ModelList.model_validate(self._json(Call("GET", "/v1/models")))

    def get_model(self, name: str) -> ModelDetail:
        """One model's versions, which one its bare name serves, and its shadows' agreement."""
        return ModelDetail.model_validate(self._json(Call("GET", f"/v1/models/{base.segment(name)}")))

    def predict_models(self, models: Sequence[str | PredictionSpec], image: ImageLike | None = None, *,
                       query: str | None = None, conf: float | None = None, iou: float | None = None,
                       classes: list[str | int] | None = None, request_id: str | None = None
                       ) -> MultiPredictResponse:
        """Run several models on one image at once (``POST /v1/predict``): names, or ``PredictionSpec`` for a
        version or an input of its own. Each prediction has its own ``status``; nothing raises for them.
        ``request_id`` pins A/B splits."""
        upload = None if image is None else self._uploads([image])[0]
        shared = {"query": query, "conf": conf, "iou": iou, "classes": classes}
        return MultiPredictResponse.model_validate(
            self._json(base.multi_predict_call(models, upload, shared, request_id)))
