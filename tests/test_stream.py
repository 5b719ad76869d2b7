"""NDJSON streaming over a real socket: flushed as produced, one line per item, cancel on disconnect."""

from __future__ import annotations

import base64
import json
import time

import httpx

from sight.api.app import create_app
from sight.config import ServerSettings, Settings
from sight.engines.registry import EngineRegistry
from tests.helpers import image_bytes, wait_until
from tests.servers import FakeLLMServer, LiveServer

STREAM = "/api/v1/inference/predict/stream"
STREAM_V2 = "/api/v1/inference/predict/stream/v2"


def _key(live: LiveServer) -> str:
    key, _ = live.call(live.app.state.services.keys.create_key, "team-s")
    return str(key)


def _b64(name: str) -> str:
    return base64.b64encode(image_bytes(name)).decode()


def test_stream_flushes_first_item_while_slow_item_runs(live: LiveServer, llm: FakeLLMServer) -> None:
    llm.mode, llm.delay = "slow", 1.5
    key = _key(live)
    files = [("files", ("fast.png", image_bytes("astronaut.png"))), ("files", ("slow.png", image_bytes("coffee.png")))]
    meta = [json.dumps({"is_yolo": True}), json.dumps({"is_llm": True})]
    lines: list[tuple[float, dict]] = []  # type: ignore[type-arg]
    start = time.monotonic()
    with httpx.stream("POST", live.url + STREAM, headers={"Authorization": f"Bearer {key}"},
                      data={"metadata": meta, "query": "what?"}, files=files, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        for raw in r.iter_lines():
            line = json.loads(raw)
            lines.append((time.monotonic() - start, line))
            if line["status"] == "done" and line["index"] == 0:
                assert not any(entry["status"] in {"done", "error"} and entry["index"] == 1 for _, entry in lines)
    first_done = next(t for t, line in lines if line["status"] == "done" and line["index"] == 0)
    complete = next(t for t, line in lines if line["status"] == "complete")
    assert complete - first_done > 0.5, "item 0 was delivered well before the slow item finished"
    assert lines[-1][1]["status"] == "complete"


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
    llm.mode, llm.delay = "slow", 1.0
    cfg = settings.model_copy(update={"server": ServerSettings(item_concurrency=1)})
    with LiveServer(create_app(cfg, engines=engines)) as live:
        key = _key(live)
        data = [{"image_base64": _b64("coffee.png"), "filename": f"{i}.png", "is_llm": True} for i in range(6)]
        with httpx.stream("POST", live.url + STREAM_V2, json={"api_key": key, "data": data}, timeout=30) as r:
            lines = r.iter_lines()  # keep the iterator: dropping it closes the connection at once
            first = json.loads(next(lines))
            assert first["status"] == "processing"
            wait_until(lambda: llm.requests, "the first item's LLM call")
            assert len(llm.requests) == 1, "the first item's LLM call is in flight"
        # The client is gone. Without cancellation the next items would call the LLM every second.
        time.sleep(3.0)
        assert len(llm.requests) == 1
