"""The Python client, in process, against a real server on loopback: every call, and the error tree."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sight.api.app import create_app
from sight.client import (
    AsyncClient,
    Client,
    DeploymentRowsError,
    ItemOptions,
    SightError,
    StreamComplete,
    StreamDone,
    StreamError,
    StreamProcessing,
    VisionPredict,
)
from sight.config import FetchSettings, RateLimitSettings, Settings
from sight.errors import (
    AuthenticationError,
    ConflictError,
    EngineUnavailableError,
    InvalidImageError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RateLimitedError,
    UpstreamError,
)
from sight.models.registry import EngineRegistry
from sight.schemas import BatchPublic, PredictionSpec
from tests.conftest import IMAGES
from tests.processes import free_port
from tests.servers import FakeLLMServer, ImageServer, LiveServer

BAD_IMAGE = base64.b64encode(b"not an image").decode()


def _key(live: LiveServer) -> str:
    key, _ = live.call(live.app.state.services.keys.create_key, "client")
    return str(key)


@pytest.fixture
def served(settings: Settings, engines: EngineRegistry) -> Iterator[tuple[LiveServer, str]]:
    """The app on loopback, allowed to fetch loopback URLs (the image_server fixture), with a patient LLM."""
    cfg = settings.model_copy(update={"fetch": FetchSettings(allow_networks=["127.0.0.0/8"]),
                                      "llm": settings.llm.model_copy(update={"timeout": 30.0})})
    with LiveServer(create_app(cfg, engines=engines)) as live:
        yield live, _key(live)


def test_client_predicts_and_runs_a_batch_end_to_end(settings: Settings, engines: EngineRegistry,
                                                      tmp_path: Path) -> None:
    with LiveServer(create_app(settings, engines=engines)) as live:
        key = _key(live)
        with Client(live.url, key) as sight:
            answer = sight.predict([IMAGES / "astronaut.png", IMAGES / "serial-label.png"],
                                   [ItemOptions(is_yolo=True), ItemOptions(is_ocr=True)])
            first, second = answer.result.items
            assert first.yolo is not None and first.yolo.detections[0].name == "FACE_FEMALE"
            assert second.ocr is not None and "Serial No: SN-4X7Q-2291-B" in second.ocr.text

            batch = sight.create_batch("labels", idempotency_key="once")
            assert sight.create_batch("labels", idempotency_key="once").batch_id == batch.batch_id
            label = base64.b64encode((IMAGES / "serial-label.png").read_bytes()).decode()
            ids = sight.add_requests(batch.batch_id, [
                VisionPredict(image_base64=label, is_ocr=True),
                ("mine", VisionPredict(image_base64=label, is_ocr=True, filename="label.png")),
            ])
            assert len(ids) == 2 and ids[1] == "mine"
            with pytest.raises(ConflictError):
                sight.add_requests(batch.batch_id, [("mine", VisionPredict(image_base64=label, is_ocr=True))])
            assert [r.batch_request_id for r in sight.list_requests(batch.batch_id).batch_request_metadata] == ids
            assert batch.batch_id in [b.batch_id for b in sight.list_batches().batches]

            live.call(live.app.state.services.runner.run_until_idle)
            done = sight.get_batch(batch.batch_id)
            assert done.state.num_success == 2 and done.state.num_pending == 0
            results = list(sight.iter_results(batch.batch_id, page_size=1))
            assert sorted(r.batch_request_id for r in results) == sorted(ids)
            assert sight.results_page(batch.batch_id, limit=1).pagination_token is not None
            assert sight.cancel_batch(batch.batch_id).batch_id == batch.batch_id

            with pytest.raises(NotFoundError):
                sight.get_batch("batch_nope")
        with Client(live.url, "sk-sight-key_000000000000-not-a-real-secret-at-all") as stranger, \
                pytest.raises(AuthenticationError) as caught:
            stranger.list_batches()
        assert isinstance(caught.value, SightError) and caught.value.code == "unauthorized"


def test_client_predict_takes_paths_bytes_pil_images_and_urls(served: tuple[LiveServer, str],
                                                              image_server: ImageServer) -> None:
    live, key = served
    astronaut = IMAGES / "astronaut.png"
    url = f"{image_server.url}/astronaut.png"
    with Client(live.url, key) as sight:
        # Files only: one multipart request; options for all images by keyword.
        answer = sight.predict([astronaut, str(astronaut), astronaut.read_bytes(), Image.open(astronaut)])
        assert answer.code == 0
        assert [i.filename for i in answer.result.items] == ["astronaut.png", "astronaut.png", "image-2",
                                                             "astronaut.png"]
        for item in answer.result.items:
            assert item.yolo is not None and item.yolo.detections[0].name == "FACE_FEMALE"
            assert item.ocr is None and item.llm is None

        # A URL among them: one v2 JSON body, the server fetches the URL; options per image.
        answer = sight.predict([url, IMAGES / "serial-label.png", Image.open(astronaut).convert("L")],
                               [ItemOptions(is_yolo=True), ItemOptions(is_ocr=True), ItemOptions(is_yolo=True)])
        fetched, label, grey = answer.result.items
        assert fetched.filename == "astronaut.png" and fetched.yolo and fetched.yolo.detections[0].name == "FACE_FEMALE"
        assert label.ocr is not None and "SN-4X7Q-2291-B" in label.ocr.text and label.yolo is None
        assert grey.status == "done" and grey.image is not None and grey.image.width == 512
        assert "/astronaut.png" in image_server.hits

        # One image alone; keyword flags on top of the default (detection).
        only = sight.predict(url, ocr=True, yolo=False, query="what is it?", llm=False)
        assert only.result.items[0].ocr is not None and only.result.items[0].yolo is None
        assert only.result.items[0].llm is None

        # A bad image is an item error, not an exception.
        mixed = sight.predict([astronaut.read_bytes(), b"not an image"])
        assert mixed.code == 1 and mixed.result.items[1].error is not None
        assert mixed.result.items[1].error.code == "invalid_image"

        with pytest.raises(InvalidInputError):
            sight.predict([astronaut, astronaut], [ItemOptions()])
        with pytest.raises(InvalidInputError):
            sight.predict(astronaut, conf=2.0)
        with pytest.raises(TypeError):
            sight.predict(astronaut, ocrr=True)  # type: ignore[call-arg]
        with pytest.raises(PayloadTooLargeError):
            sight.predict([b"x"] * 17)  # the test server takes 16 files a request


def test_client_stream_yields_each_event_while_a_slow_item_is_still_running(
    served: tuple[LiveServer, str], llm: FakeLLMServer
) -> None:
    live, key = served
    llm.mode = "gate"  # the LLM item is held until the gate opens
    seen: list[str] = []
    try:
        with Client(live.url, key) as sight:
            events = sight.predict_stream([IMAGES / "astronaut.png", IMAGES / "coffee.png", b"not an image"],
                                          [ItemOptions(is_yolo=True), ItemOptions(is_llm=True),
                                           ItemOptions(is_yolo=True)], query="what is it?")
            for event in events:
                if isinstance(event, StreamProcessing | StreamDone | StreamError):
                    seen.append(f"{event.status} {event.index}")
                else:
                    assert isinstance(event, StreamComplete)
                    seen.append("complete")
                    assert event.summary.total == 3 and event.summary.error == 1
                    assert event.answer == "I see an image."
                if {"done 0", "error 2", "processing 1"} <= set(seen) and not llm.gate.is_set():
                    # Delivered while item 1 cannot have finished: the stream is read as it is written.
                    assert "done 1" not in seen and "complete" not in seen
                    seen.append("gate opened")
                    llm.gate.set()
    finally:
        llm.gate.set()
    assert seen.index("gate opened") < seen.index("done 1") < seen.index("complete") == len(seen) - 1


def test_async_client_streams_predicts_and_waits_for_a_batch(served: tuple[LiveServer, str],
                                                             llm: FakeLLMServer) -> None:
    live, key = served
    llm.mode = "gate"

    async def main() -> None:
        async with AsyncClient(live.url, key) as sight:
            seen: list[str] = []
            try:
                async for event in sight.predict_stream([IMAGES / "astronaut.png", IMAGES / "coffee.png"],
                                                        [ItemOptions(is_yolo=True), ItemOptions(is_llm=True)]):
                    seen.append(event.status + (f" {event.index}" if not isinstance(event, StreamComplete) else ""))
                    if "done 0" in seen and not llm.gate.is_set():
                        assert "done 1" not in seen
                        seen.append("gate opened")
                        llm.gate.set()
            finally:
                llm.gate.set()
            assert seen.index("gate opened") < seen.index("done 1") < seen.index("complete")

            answer = await sight.predict(IMAGES / "serial-label.png", ocr=True, yolo=False)
            assert answer.result.items[0].ocr is not None and "SN-4X7Q-2291-B" in answer.result.items[0].ocr.text

            batch = await sight.create_batch("async")
            label = base64.b64encode((IMAGES / "serial-label.png").read_bytes()).decode()
            ids = await sight.add_requests(batch.batch_id, [("a", VisionPredict(image_base64=label, is_ocr=True)),
                                                            ("b", VisionPredict(image_base64=BAD_IMAGE))])
            progress: list[BatchPublic] = []

            async def on_progress(b: BatchPublic) -> None:
                progress.append(b)

            ended = await sight.wait(batch.batch_id, on_progress=on_progress, poll=0.05)
            assert ended.status == "ended" and progress[-1] == ended
            assert (ended.state.num_success, ended.state.num_error) == (1, 1)
            results = [r async for r in sight.iter_results(batch.batch_id, page_size=1)]
            assert sorted(r.batch_request_id for r in results) == ids
            assert (await sight.list_requests(batch.batch_id)).batch_request_metadata[0].batch_request_id == "a"
            assert (await sight.results_page(batch.batch_id, limit=1)).pagination_token is not None
            assert (await sight.list_batches(limit=1)).batches[0].batch_id == batch.batch_id
            assert (await sight.get_batch(batch.batch_id)).batch_id == batch.batch_id
            assert (await sight.cancel_batch(batch.batch_id)).status == "ended", "an ended batch stays ended"

            astronaut = base64.b64encode((IMAGES / "astronaut.png").read_bytes()).decode()
            assert (await sight.call("detect", "latest", [astronaut]))[0]["name"] == "FACE_FEMALE"
            assert "nudenet" in [m.name for m in (await sight.list_models()).models]
            assert (await sight.get_model("nudenet")).serves == "1"
            multi = await sight.predict_models(["nudenet", "rapidocr"], IMAGES / "serial-label.png")
            assert [p.status for p in multi.predictions] == ["Success", "Success"]
            with pytest.raises(NotFoundError):
                await sight.get_batch("batch_nope")

    asyncio.run(main())


def test_client_wait_reports_progress_until_the_batch_ends(served: tuple[LiveServer, str]) -> None:
    live, key = served
    label = base64.b64encode((IMAGES / "serial-label.png").read_bytes()).decode()
    with Client(live.url, key) as sight:
        batch = sight.create_batch("wait")
        sight.add_requests(batch.batch_id, [VisionPredict(image_base64=label, is_ocr=True) for _ in range(3)])
        progress: list[BatchPublic] = []
        ended = sight.wait(batch.batch_id, on_progress=progress.append, poll=0.05)
        assert ended.status == "ended" and ended.state.num_success == 3 and progress[-1] == ended
        assert all(p.status == "processing" for p in progress[:-1])
        pending = [p.state.num_pending for p in progress]
        assert pending == sorted(pending, reverse=True), "progress only moves forward"

        empty = sight.create_batch("never ends: nothing in it")
        start = time.monotonic()
        with pytest.raises(SightError) as caught:
            sight.wait(empty.batch_id, poll=0.05, timeout=0.3)
        assert caught.value.code == "timeout" and time.monotonic() - start < 5


def test_client_calls_deployments_with_single_inputs_and_id_tagged_rows(served: tuple[LiveServer, str]) -> None:
    live, key = served
    astronaut = base64.b64encode((IMAGES / "astronaut.png").read_bytes()).decode()
    label = base64.b64encode((IMAGES / "serial-label.png").read_bytes()).decode()
    with Client(live.url, key) as sight:
        assert sight.call("detect", "latest", [astronaut, {"conf": 0.4}])[0]["name"] == "FACE_FEMALE"
        assert "SN-4X7Q-2291-B" in sight.call("ocr", 1, label)["text"]
        rows = sight.call("detect", "latest", [["b", label], [2, astronaut], [1, label]])
        assert [row_id for row_id, _ in rows] == [1, 2, "b"], "numbers before strings, as the server sorts"
        assert rows[1][1][0]["name"] == "FACE_FEMALE" and rows[0][1] == []

        with pytest.raises(DeploymentRowsError) as caught:
            sight.call("detect", "latest", [[1, astronaut], [2, BAD_IMAGE], ["x", "http://127.0.0.1:1/a.png"]])
        failed = caught.value
        assert [row_id for row_id, _ in failed.data] == [1, 2, "x"]
        assert failed.data[0][1][0]["name"] == "FACE_FEMALE" and failed.data[1][1] is None
        assert isinstance(failed.errors[2], InvalidImageError) and failed.errors["x"].code == "fetch_failed"
        assert set(failed.errors) == {2, "x"} and "2 of 3 rows failed" in failed.message

        with pytest.raises(NotFoundError):
            sight.call("nope", "latest", [astronaut])
        with pytest.raises(NotFoundError):
            sight.call("detect", "7", [astronaut])
        with pytest.raises(InvalidInputError):
            sight.call("detect", "latest", [[1, astronaut], [1, astronaut]])  # duplicate ids


def test_client_lists_models_and_predicts_with_several(served: tuple[LiveServer, str]) -> None:
    live, key = served
    with Client(live.url, key) as sight:
        listing = sight.list_models()
        by_name = {m.name: m for m in listing.models}
        assert by_name["nudenet"].task == "detect" and by_name["rapidocr"].task == "ocr"
        assert listing.llm is not None and listing.llm.state == "ready"
        detail = sight.get_model("nudenet")
        assert detail.serves == "1" and [v.version for v in detail.versions] == ["1"]
        with pytest.raises(NotFoundError):
            sight.get_model("nope")

        multi = sight.predict_models(["nudenet", PredictionSpec(model_name="rapidocr"), "nope"],
                                     IMAGES / "astronaut.png", request_id="pinned")
        det, ocr, missing = multi.predictions
        assert det.status == "Success" and det.prediction[0]["name"] == "FACE_FEMALE"
        assert ocr.status == "Success" and missing.status == "BadRequest"
        url_input = PredictionSpec.model_validate({"model_name": "rapidocr", "input": {
            "image_base64": base64.b64encode((IMAGES / "serial-label.png").read_bytes()).decode()}})
        (own,) = sight.predict_models([url_input]).predictions
        assert own.status == "Success" and "SN-4X7Q-2291-B" in own.prediction["text"]


def test_client_maps_error_answers_to_the_error_tree(settings: Settings, engines: EngineRegistry) -> None:
    cfg = settings.model_copy(update={"rate_limit": RateLimitSettings(images_per_minute=1)})
    with LiveServer(create_app(cfg, engines=engines)) as live, Client(live.url, _key(live)) as sight:
        with pytest.raises(InvalidInputError) as invalid:
            sight.create_batch("")
        assert invalid.value.code == "invalid_input" and "name" in invalid.value.message
        sight.predict(IMAGES / "astronaut.png")
        start = time.monotonic()
        with pytest.raises(RateLimitedError) as limited:
            sight.predict(IMAGES / "astronaut.png")
        assert isinstance(limited.value, OverloadedError) and limited.value.retry_after > 30
        assert time.monotonic() - start < 5, "a wait over max_retry_wait is not waited for"
    with Client(f"http://127.0.0.1:{free_port()}", "sk-any") as nowhere, pytest.raises(UpstreamError):
        nowhere.list_models()


def test_client_reads_url_and_key_from_the_environment(served: tuple[LiveServer, str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    live, key = served
    for name in ("SIGHT_API_KEY", "SIGHT_CLIENT__API_KEY", "SIGHT_CLIENT__URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(AuthenticationError, match="SIGHT_API_KEY"):
        Client()
    monkeypatch.setenv("SIGHT_CLIENT__URL", live.url)
    monkeypatch.setenv("SIGHT_CLIENT__API_KEY", key)
    with Client() as sight:
        assert sight.url == live.url and sight.list_batches().batches == []
    monkeypatch.delenv("SIGHT_CLIENT__API_KEY")
    monkeypatch.setenv("SIGHT_API_KEY", key)
    with Client() as sight:
        assert sight.list_models().models


def test_client_imports_only_schemas_and_errors_of_sight() -> None:
    code = "import sys, sight.client; print(sorted(m for m in sys.modules if m.startswith('sight')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = {m for m in json.loads(done.stdout.replace("'", '"')) if not m.startswith("sight.client")}
    assert {m for m in loaded if not m.startswith("sight.schemas.")} == {"sight", "sight.errors", "sight.schemas"}
    assert loaded > {"sight.schemas.common", "sight.schemas.predict"}


# -- retries, against a scripted server ----------------------------------------------------------------------


Answer = tuple[int, dict[str, str], bytes]


def _overloaded(status: int, retry_after: str | None, code: str = "overloaded") -> Answer:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return status, headers, json.dumps({"detail": {"code": code, "message": "busy"}}).encode()


OK_MODELS: Answer = (200, {}, b'{"models": []}')


class Scripted:
    """A loopback HTTP server answering each request with the next scripted answer (the last one repeats);
    ``requests`` records what came in."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.requests.append(f"{self.command} {self.path}")
                status, headers, body = owner.answers.pop(0) if len(owner.answers) > 1 else owner.answers[0]
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> Scripted:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_client_retries_refusals_after_retry_after_and_stops_at_the_bounds() -> None:
    batch = {"batch_id": "batch_1", "name": "n", "create_time": "t", "expire_time": "t", "cancel_time": None,
             "create_api_key_id": "key_1", "status": "processing", "state": {
                 "num_requests": 0, "num_pending": 0, "num_success": 0, "num_error": 0, "num_cancelled": 0}}
    with Scripted(_overloaded(503, "0"), OK_MODELS) as server, Client(server.url, "k") as sight:
        assert sight.list_models().models == []
        assert server.requests == ["GET /v1/models"] * 2
    with Scripted(_overloaded(429, "0", "rate_limited"), (200, {}, json.dumps(batch).encode())) as server, \
            Client(server.url, "k") as sight:
        assert sight.create_batch("n").batch_id == "batch_1"
        assert server.requests == ["POST /v1/batches"] * 2, "refused before any work: safe to send again"
    with Scripted(_overloaded(503, "0")) as server, Client(server.url, "k", max_attempts=3) as sight:
        with pytest.raises(OverloadedError) as caught:
            sight.list_models()
        assert len(server.requests) == 3 and caught.value.retry_after == 0
    with Scripted(_overloaded(503, "120"), OK_MODELS) as server, Client(server.url, "k", max_retry_wait=30) as sight:
        with pytest.raises(OverloadedError) as caught:
            sight.list_models()
        assert len(server.requests) == 1 and caught.value.retry_after == 120
    with Scripted(_overloaded(503, None, "llm_unavailable"), OK_MODELS) as server, Client(server.url, "k") as sight:
        with pytest.raises(EngineUnavailableError):
            sight.list_models()
        assert len(server.requests) == 1, "a 503 without Retry-After is no refusal: not sent again"
    with Scripted((502, {}, b"<html>bad gateway</html>")) as server, Client(server.url, "k") as sight, \
            pytest.raises(UpstreamError, match="HTTP 502"):
        sight.list_models()


def test_client_retries_a_refused_stream_and_async_calls() -> None:
    lines = [{"status": "processing", "index": 0, "filename": "image-0"},
             {"status": "error", "index": 0, "filename": "image-0",
              "error": {"code": "invalid_image", "message": "no"}}]
    complete = {"status": "complete", "summary": {"total": 1, "done": 0, "error": 1}, "answer": None,
                "duration_ms": 1.0}
    ndjson = "".join(json.dumps(x) + "\n" for x in [*lines, complete]).encode()
    with Scripted(_overloaded(503, "0"), (200, {"Content-Type": "application/x-ndjson"}, ndjson)) as server, \
            Client(server.url, "k") as sight:
        events = list(sight.predict_stream(b"not an image"))
        assert [type(e) for e in events] == [StreamProcessing, StreamError, StreamComplete]
        assert server.requests == ["POST /api/v1/inference/predict/stream"] * 2
    cut = "".join(json.dumps(x) + "\n" for x in lines).encode()
    with Scripted((200, {"Content-Type": "application/x-ndjson"}, cut)) as server, \
            Client(server.url, "k") as sight, pytest.raises(UpstreamError, match="complete line"):
        list(sight.predict_stream(b"not an image"))

    async def main(url: str) -> None:
        async with AsyncClient(url, "k") as sight:
            assert (await sight.list_models()).models == []

    with Scripted(_overloaded(503, "0"), _overloaded(429, "0", "rate_limited"), OK_MODELS) as server:
        asyncio.run(main(server.url))
        assert len(server.requests) == 3


def test_client_takes_a_pydantic_class_as_the_response_schema(served: tuple[LiveServer, str],
                                                              llm: FakeLLMServer) -> None:
    from pydantic import BaseModel, Field

    class Plate(BaseModel):
        serial_number: str = Field(pattern="SN-[A-Z0-9]{4}-[0-9]{4}-[A-Z0-9]{1,2}")
        year: int | None = None

    class Label(BaseModel):
        plate: Plate
        maker: str | None = None

    live, key = served
    label = (IMAGES / "serial-label.png").read_bytes()
    with Client(live.url, key) as sight:
        found = sight.predict([label, IMAGES / "bus.jpg"], response_schema=Label, yolo=False)
        first = found.result.items[0]
        assert first.fields == {"plate": {"serial_number": "SN-4X7Q-2291-B", "year": None}, "maker": None}
        assert isinstance(first.parsed, Label) and first.parsed.plate.serial_number == "SN-4X7Q-2291-B"
        assert first.evidence is not None and first.evidence["plate.serial_number"][0].match == "exact"
        assert found.result.items[1].parsed is None  # no serial in the bus photo: fields do not validate
        assert found.result.parsed == first.parsed  # the request's merged fields
        events = list(sight.predict_stream(label, response_schema=Label, yolo=False))
        done = next(e for e in events if isinstance(e, StreamDone))
        assert done.result.parsed == first.parsed and events[-1].parsed == first.parsed
        as_dict = sight.predict(label, response_schema=Label.model_json_schema(), yolo=False).result
        assert as_dict.fields == first.fields and as_dict.parsed is None  # a dict: fields, no class to parse as
