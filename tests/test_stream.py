"""NDJSON streaming over a real socket: flushed as produced, one line per item, cancel on disconnect."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import httpx
from fastapi import FastAPI

from sight.api.app import create_app
from sight.config import Settings
from sight.models.registry import EngineRegistry
from tests.helpers import image_bytes, wait_until
from tests.servers import FakeLLMServer, LiveServer

STREAM = "/api/v1/inference/predict/stream"
STREAM_V2 = "/api/v1/inference/predict/stream/v2"


def _key(live: LiveServer) -> str:
    key, _ = live.call(live.app.state.services.keys.create_key, "team-s")
    return str(key)


def _b64(name: str) -> str:
    return base64.b64encode(image_bytes(name)).decode()


def _held_llm_app(settings: Settings, engines: EngineRegistry, **server: Any) -> FastAPI:
    """An app whose LLM calls wait at the test's gate: no client timeout or retry may end a held call first."""
    cfg = settings.model_copy(update={"server": settings.server.model_copy(update=server),
                                      "llm": settings.llm.model_copy(update={"timeout": 60.0, "retries": 0})})
    # A registry of its own: the shared one's LLM client keeps the suite's 2 s timeout.
    return create_app(cfg, engines=EngineRegistry(cfg, detectors={"nudenet": engines.detector("nudenet")}))


def test_stream_flushes_first_item_while_slow_item_runs(
    settings: Settings, engines: EngineRegistry, llm: FakeLLMServer
) -> None:
    llm.mode = "gate"  # the slow item's LLM call is held until the test has read item 0's line
    files = [("files", ("fast.png", image_bytes("astronaut.png"))), ("files", ("slow.png", image_bytes("coffee.png")))]
    meta = [json.dumps({"is_yolo": True}), json.dumps({"is_llm": True})]
    lines: list[dict] = []  # type: ignore[type-arg]
    with LiveServer(_held_llm_app(settings, engines)) as live:
        key = _key(live)
        with httpx.stream("POST", live.url + STREAM, headers={"Authorization": f"Bearer {key}"},
                          data={"metadata": meta, "query": "what?"}, files=files, timeout=30) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("application/x-ndjson")
            for raw in r.iter_lines():
                line = json.loads(raw)
                lines.append(line)
                if line["status"] == "done" and line["index"] == 0:
                    assert not any(entry["status"] in {"done", "error"} and entry["index"] == 1 for entry in lines)
                    # Delivered while the LLM still held the slow item's answer: flushed, not buffered to the end.
                    assert llm.held == [], f"the LLM's held answer ended ({llm.held}) before item 0 arrived"
                    llm.gate.set()
    assert llm.gate.is_set(), "item 0's line never came"
    assert llm.held == ["released"]
    assert [x["index"] for x in lines if x["status"] == "done"] == [0, 1], "the slow item finished after its gate"
    assert lines[-1]["status"] == "complete"


def test_stream_one_final_line_per_item_and_complete_last(live: LiveServer) -> None:
    key = _key(live)
    data = [
        {"image_base64": _b64("astronaut.png"), "filename": "a.png", "is_yolo": True},
        {"image_base64": "bm90IGFuIGltYWdl", "filename": "bad.png", "is_yolo": True},
        {"image_base64": _b64("serial-label.png"), "filename": "label.png", "is_ocr": True},
        {"image_url": "http://127.0.0.1/x.png", "filename": "private.png", "is_yolo": True},
    ]
    r = httpx.post(live.url + STREAM_V2, json={"api_key": key, "data": data}, timeout=60)
    assert r.status_code == 200
    lines = [json.loads(x) for x in r.text.splitlines()]
    finals = [x for x in lines if x["status"] in {"done", "error"}]
    assert sorted(x["index"] for x in finals) == [0, 1, 2, 3]
    assert sorted(x["index"] for x in lines if x["status"] == "processing") == [0, 1, 2, 3]
    assert lines[-1]["status"] == "complete"
    assert sum(x["status"] == "complete" for x in lines) == 1
    assert lines[-1]["summary"] == {"total": 4, "done": 2, "error": 2}
    by_index = {x["index"]: x for x in finals}
    assert by_index[0]["result"]["yolo"]["detections"][0]["name"] == "FACE_FEMALE"
    assert by_index[1]["error"]["code"] == "invalid_image"
    assert "SN-4X7Q-2291-B" in by_index[2]["result"]["ocr"]["text"]
    assert by_index[3]["error"]["code"] == "url_not_allowed"


def test_stream_request_errors_answer_before_streaming(live: LiveServer) -> None:
    r = httpx.post(live.url + STREAM_V2, json={"data": [{"image_base64": _b64("coffee.png")}]}, timeout=30)
    assert r.status_code == 401 and r.json()["detail"]["code"] == "unauthorized"


def test_client_disconnect_cancels_pending_work(
    settings: Settings, engines: EngineRegistry, llm: FakeLLMServer
) -> None:
    llm.mode = "gate"  # the first item's LLM call is held: only a cancel can end it
    with LiveServer(_held_llm_app(settings, engines, item_concurrency=1)) as live:
        key = _key(live)
        data = [{"image_base64": _b64("coffee.png"), "filename": f"{i}.png", "is_llm": True} for i in range(6)]
        with httpx.stream("POST", live.url + STREAM_V2, json={"api_key": key, "data": data}, timeout=30) as r:
            lines = r.iter_lines()  # keep the iterator: dropping it closes the connection at once
            first = json.loads(next(lines))
            assert first["status"] == "processing"
            wait_until(lambda: llm.requests, "the first item's LLM call")
            assert len(llm.requests) == 1, "the first item's LLM call is in flight"
        # The client is gone: the server cancels the item under way (hanging up on the LLM) and every pending one.
        # Well inside the LLM client's own 60 s timeout: only the cancel can end the call this soon.
        wait_until(lambda: llm.held, "the server ending the held LLM call", timeout=30)
        assert llm.held == ["hangup"], "the cancel ended the call while the LLM still held its answer"
        admission = live.app.state.services.admission

        async def admitted() -> int:  # read on the server's loop, which alone changes it
            return sum(admission.inflight.values())

        # Its capacity comes back only once every task of the request has ended: none can call the LLM any more.
        wait_until(lambda: live.call(admitted) == 0, "the server letting go of the request")
        metrics = httpx.get(live.url + "/metrics", timeout=10).text
    cancelled = re.search(r"^sight_cancelled_items_total (\S+)$", metrics, re.M)
    assert cancelled and float(cancelled[1]) >= 1, "the server counts the item it cancelled"
    assert len(llm.requests) == 1, "no pending item called the LLM after the client left"


def test_stream_error_line_keeps_the_stages_that_worked(live: LiveServer, llm: FakeLLMServer) -> None:
    """An item whose one stage fails keeps every other stage's result: its error line carries them."""
    key = _key(live)
    llm.mode = "500"
    data = [{"image_base64": _b64("serial-label.png"), "filename": "label.png", "is_ocr": True, "is_llm": True},
            {"image_base64": _b64("astronaut.png"), "filename": "a.png", "is_yolo": True,
             "yolo_model": "ghost", "is_ocr": True}]
    r = httpx.post(live.url + STREAM_V2, json={"api_key": key, "data": data, "query": "serial?"}, timeout=60)
    finals = {x["index"]: x for x in map(json.loads, r.text.splitlines()) if x["status"] in {"done", "error"}}
    label, face = finals[0], finals[1]
    assert label["status"] == "error" and label["error"]["code"] in {"llm_error", "llm_unavailable"}, label
    assert "SN-4X7Q-2291-B" in label["result"]["ocr"]["text"] and label["result"]["status"] == "error"
    assert face["status"] == "error" and face["error"]["code"] == "model_not_found", face
    assert face["result"]["ocr"] is not None and face["result"]["yolo"] is None
