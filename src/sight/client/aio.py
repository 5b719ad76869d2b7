"""The async client (httpx): the sync client's calls, awaited."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Unpack

import anyio
import httpx

from sight.client import base
from sight.client.base import DEFAULT_TIMEOUT, Call, ClientBase, ItemFlags, SchemaLike, StreamEvent, translated
from sight.client.images import ImageLike, Upload, as_list, source_of
from sight.errors import UpstreamError
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


class AsyncClient(ClientBase):
    """``Client`` for asyncio (and trio): the same methods and arguments, awaited; ``predict_stream`` is an async
    iterator. Pass ``transport=httpx.ASGITransport(app)`` to reach an app in process.

    >>> async def main() -> None:
    ...     async with AsyncClient(server_url, api_key=api_key) as sight:
    ...         async for event in sight.predict_stream(image):
    ...             print(event.status, getattr(event, "index", ""))
    >>> asyncio.run(main())
    processing 0
    done 0
    complete
    """

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, max_attempts: int = 3,
                 max_retry_wait: float = 30.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(url, api_key, max_attempts=max_attempts, max_retry_wait=max_retry_wait)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call, stream: bool = False) -> httpx.Response:
        attempt = 1
        while True:
            with translated():
                request = self._http.build_request(call.method, call.path, **call.request_args())
                response = await self._http.send(request, stream=stream)
                if response.status_code < 400:
                    return response
                await response.aread()
                await response.aclose()
            delay = self.retry_delay(response, attempt)
            if delay is None:
                raise base.error_from(response)
            attempt += 1
            await anyio.sleep(delay)

    async def _json(self, call: Call) -> Any:
        return (await self._send(call)).json()

    async def _uploads(self, images: Sequence[ImageLike]) -> list[Upload]:
        out = []
        for i, image in enumerate(images):
            source = source_of(image, i)
            if isinstance(source, Path):
                source = Upload(source.name, await anyio.Path(source).read_bytes())
            out.append(source)
        return out

    async def _predict_call(self, images: ImageLike | Sequence[ImageLike],
                            options: ItemOptions | Sequence[ItemOptions] | None, query: str | None, stream: bool,
                            flags: ItemFlags, response_schema: SchemaLike | None = None) -> Call:
        uploads = await self._uploads(as_list(images))
        return base.predict_call(uploads, base.item_options(len(uploads), options, query, flags), query, stream,
                                 response_schema)

    # -- prediction API ------------------------------------------------------------------------------

    async def predict(self, images: ImageLike | Sequence[ImageLike],
                      options: ItemOptions | Sequence[ItemOptions] | None = None, *, query: str | None = None,
                      response_schema: SchemaLike | None = None,
                      **flags: Unpack[ItemFlags]) -> PredictBatchResponse:
        """See ``Client.predict``."""
        call = await self._predict_call(images, options, query, False, flags, response_schema)
        found = PredictBatchResponse.model_validate(await self._json(call))
        base.bind_schema(found, response_schema)
        return found

    async def predict_stream(self, images: ImageLike | Sequence[ImageLike],
                             options: ItemOptions | Sequence[ItemOptions] | None = None, *,
                             query: str | None = None, response_schema: SchemaLike | None = None,
                             **flags: Unpack[ItemFlags]) -> AsyncIterator[StreamEvent]:
        """See ``Client.predict_stream``: each event as its line arrives."""
        call = await self._predict_call(images, options, query, True, flags, response_schema)
        response = await self._send(call, stream=True)
        complete = False
        try:
            with translated():
                async for line in response.aiter_lines():
                    if line.strip():
                        event = base.parse_event(line)
                        base.bind_schema(event, response_schema)
                        complete = isinstance(event, StreamComplete)
                        yield event
        finally:
            await response.aclose()
        if not complete:
            raise UpstreamError("the stream ended before its complete line")

    # -- batches -------------------------------------------------------------------------------------

    async def create_batch(self, name: str, idempotency_key: str | None = None) -> BatchPublic:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return BatchPublic.model_validate(await self._json(Call("POST", "/v1/batches", json={"name": name},
                                                                headers=headers)))

    async def list_batches(self, limit: int | None = None, token: str | None = None) -> BatchList:
        return BatchList.model_validate(await self._json(Call("GET", "/v1/batches", base.page_params(limit, token))))

    async def get_batch(self, batch_id: str) -> BatchPublic:
        return BatchPublic.model_validate(await self._json(Call("GET", f"/v1/batches/{base.segment(batch_id)}")))

    async def add_requests(self, batch_id: str,
                           requests: Sequence[VisionPredict | tuple[str | None, VisionPredict]]) -> list[str]:
        """See ``Client.add_requests``."""
        return list((await self._json(base.add_requests_call(batch_id, requests)))["batch_request_ids"])

    async def list_requests(self, batch_id: str, limit: int | None = None,
                            token: str | None = None) -> BatchRequestList:
        return BatchRequestList.model_validate(await self._json(Call(
            "GET", f"/v1/batches/{base.segment(batch_id)}/requests", base.page_params(limit, token))))

    async def results_page(self, batch_id: str, limit: int | None = None,
                           token: str | None = None) -> BatchResultList:
        return BatchResultList.model_validate(await self._json(Call(
            "GET", f"/v1/batches/{base.segment(batch_id)}/results", base.page_params(limit, token))))

    async def iter_results(self, batch_id: str, page_size: int = 500) -> AsyncIterator[BatchResultEntry]:
        """Every result available now, each once."""
        token: str | None = None
        while True:
            page = await self.results_page(batch_id, page_size, token)
            for entry in page.results:
                yield entry
            if page.pagination_token is None or not page.results:
                return
            token = page.pagination_token

    async def wait(self, batch_id: str, *,
                   on_progress: Callable[[BatchPublic], Awaitable[object] | object] | None = None,
                   poll: float = 1.0) -> BatchPublic:
        """See ``Client.wait``; ``on_progress`` may be a coroutine function. Bound the wait the async way:
        ``with anyio.fail_after(600): await sight.wait(batch_id)`` (or ``asyncio.timeout``)."""
        while True:
            batch = await self.get_batch(batch_id)
            if on_progress is not None:
                maybe = on_progress(batch)
                if inspect.isawaitable(maybe):
                    await maybe
            if batch.status != "processing":
                return batch
            await anyio.sleep(poll)

    async def cancel_batch(self, batch_id: str) -> BatchPublic:
        return BatchPublic.model_validate(
            await self._json(Call("POST", f"/v1/batches/{base.segment(batch_id)}:cancel")))

    # -- deployments ---------------------------------------------------------------------------------

    async def call(self, name: str, ref: str | int = "latest", data: Any = None, *, batch: bool | None = None) -> Any:
        """See ``Client.call``."""
        return base.deployment_data(await self._json(base.deployment_call(name, ref, data, batch)))

    # -- models --------------------------------------------------------------------------------------

    async def list_models(self) -> ModelList:
        return ModelList.model_validate(await self._json(Call("GET", "/v1/models")))

    async def get_model(self, name: str) -> ModelDetail:
        return ModelDetail.model_validate(await self._json(Call("GET", f"/v1/models/{base.segment(name)}")))

    async def predict_models(self, models: Sequence[str | PredictionSpec], image: ImageLike | None = None, *,
                             query: str | None = None, conf: float | None = None, iou: float | None = None,
                             classes: list[str | int] | None = None, request_id: str | None = None
                             ) -> MultiPredictResponse:
        """See ``Client.predict_models``."""
        upload = None if image is None else (await self._uploads([image]))[0]
        shared = {"query": query, "conf": conf, "iou": iou, "classes": classes}
        return MultiPredictResponse.model_validate(
            await self._json(base.multi_predict_call(models, upload, shared, request_id)))
