"""NDJSON streaming of pipeline events: one line per event, flushed as produced."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from sight.api.forms import PredictCall
from sight.pipeline.conclusion import conclude
from sight.pipeline.pipeline import Pipeline
from sight.pipeline.results import kept_stages, summarize
from sight.schemas import ErrorInfo, ItemResult, StreamComplete, StreamDone, StreamError, StreamProcessing

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"


def _line(model: BaseModel) -> bytes:
    try:
        return model.model_dump_json(by_alias=True).encode() + b"\n"
    except (PydanticSerializationError, UnicodeError):
        # A bug let text in that cannot be written out: this line becomes an error, the stream goes on.
        log.exception("stream line could not be serialized")
        index = getattr(model, "index", None)
        if index is None:
            raise
        error = ErrorInfo(code="internal", message="this item's result could not be serialized")
        return StreamError(index=index, filename=None, error=error).model_dump_json().encode() + b"\n"


async def _lines(pipeline: Pipeline, call: PredictCall) -> AsyncIterator[bytes]:
    start = time.perf_counter()
    results: list[ItemResult] = []
    async for event in pipeline.events(call.items, call.query):
        if isinstance(event, StreamProcessing):
            yield _line(event)
            continue
        results.append(event)
        if event.status == "done":
            yield _line(StreamDone(index=event.index, filename=event.filename, result=event))
        else:
            assert event.error is not None
            yield _line(StreamError(index=event.index, filename=event.filename, error=event.error,
                                    result=event if kept_stages(event) else None))
    answer, merged = await conclude(pipeline, call.query, results)
    duration = round((time.perf_counter() - start) * 1000, 2)
    yield _line(StreamComplete(**dict(merged), summary=summarize(results), answer=answer,
                                     duration_ms=duration))


def ndjson_response(request: Request, pipeline: Pipeline, call: PredictCall) -> StreamingResponse:
    """Stream ``call``; a client that goes away cancels the work still pending for it."""

    async def body() -> AsyncIterator[bytes]:
        out: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def produce() -> None:
            try:
                async for line in _lines(pipeline, call):
                    await out.put(line)
            finally:
                out.put_nowait(None)

        async def watch_disconnect() -> None:
            # The body is fully read by now, so the next message can only be a disconnect.
            while (await request.receive())["type"] != "http.disconnect":
                pass
            producer.cancel()

        producer = asyncio.create_task(produce())
        watcher = asyncio.create_task(watch_disconnect())
        try:
            while (line := await out.get()) is not None:
                yield line
            await producer  # surfaces a bug in production instead of ending the stream silently
        finally:
            producer.cancel()
            watcher.cancel()
            # Starlette cancels this generator through an anyio scope that keeps cancelling every await:
            # shield the cleanup so uploads are always closed.
            with anyio.CancelScope(shield=True):
                await asyncio.gather(producer, watcher, return_exceptions=True)
                await call.close()

    return StreamingResponse(body(), media_type=NDJSON, headers={"Cache-Control": "no-store",
                                                                  "X-Accel-Buffering": "no"})
