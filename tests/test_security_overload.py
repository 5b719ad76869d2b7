"""Overload: bounded admission answers 503 with Retry-After, stages time out, shutdown drains streams."""

from __future__ import annotations

import base64
import json
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from sight.api.app import create_app
from sight.config import ServerSettings, Settings
from sight.models.registry import EngineRegistry
from tests.helpers import image_bytes, v1_request, wait_until
from tests.processes import SightServer, sight_env
from tests.servers import FakeLLMServer, LiveServer

BATCH = "/api/v1/inference/predict/batch"


def _b64(name: str) -> str:
    return base64.b64encode(image_bytes(name)).decode()


def test_past_the_queue_bound_requests_get_503_with_retry_after(
    settings: Settings, engines: EngineRegistry, llm: FakeLLMServer
) -> None:
    llm.mode = "gate"  # the first request's LLM calls hang until the test opens the gate
    cfg = settings.model_copy(update={"server": ServerSettings(max_queue=2, retry_after=3),
                                      "llm": settings.llm.model_copy(update={"timeout": 60.0, "retries": 0})})
    with LiveServer(create_app(cfg, engines=engines)) as live:
        key, _ = live.call(live.app.state.services.keys.create_key, "t")
        body = {"api_key": key, "data": [{"image_base64": _b64("coffee.png"), "is_llm": True}] * 2}
        first: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: first.update(
            httpx.post(live.url + BATCH + "/v2", json=body, timeout=30).json()))
        worker.start()
        wait_until(lambda: llm.requests, "the first request's LLM call")
        refused = httpx.post(live.url + BATCH + "/v2", json={**body, "data": body["data"][:1]}, timeout=30)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
        assert worker.is_alive(), "refused at once, not queued behind the first request (still held at the LLM)"
        assert refused.json()["detail"]["code"] == "overloaded"
        other = {"api_key": key, "data": [{"image_base64": _b64("astronaut.png"), "is_yolo": True}]}
        assert httpx.post(live.url + BATCH + "/v2", json=other, timeout=30).status_code == 503, "images are bounded too"
        llm.gate.set()
        worker.join(timeout=30)
        assert first["result"]["summary"]["done"] == 2
        again = httpx.post(live.url + BATCH + "/v2", json={**body, "data": body["data"][:1]}, timeout=30)
        assert again.status_code == 200, "capacity is given back"


def test_a_stage_over_its_timeout_is_an_item_error(settings: Settings, engines: EngineRegistry) -> None:
    cfg = settings.model_copy(update={"yolo": settings.yolo.model_copy(update={"timeout": 0.0001})})
    with TestClient(create_app(cfg, engines=engines)) as client:
        key, _ = client.portal.call(client.app.state.services.keys.create_key, "t")  # type: ignore[attr-defined]
        r = client.post(BATCH, **v1_request([("a.png", image_bytes("astronaut.png"))], [{"is_yolo": True}],
                                            api_key=key))
    item = r.json()["result"]["items"][0]
    assert item["error"]["code"] == "timeout" and "detection" in item["error"]["message"]


def test_readyz_reports_503_while_draining(client: TestClient, app) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/readyz").status_code == 200
    app.state.services.draining = True
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["draining"] is True


@pytest.mark.slow
def test_sigterm_during_a_stream_ends_it_with_a_final_line(tmp_path: Path, llm: FakeLLMServer) -> None:
    llm.mode = "gate"  # item 0's LLM call is held until the server has begun to drain
    env = sight_env(tmp_path, SIGHT_LLM__BASE_URL=llm.url, SIGHT_LLM__MODEL="fake-vl",
                    SIGHT_SERVER__ITEM_CONCURRENCY="1")
    server = SightServer(tmp_path, env)
    try:
        key = server.first_key()
        data = [{"image_base64": _b64("coffee.png"), "filename": f"{i}.png", "is_llm": True} for i in range(5)]
        lines: list[dict[str, Any]] = []
        with httpx.stream("POST", server.url + "/api/v1/inference/predict/stream/v2",
                          json={"api_key": key, "data": data}, timeout=60) as r:
            for raw in r.iter_lines():
                lines.append(json.loads(raw))
                if len(lines) == 1:
                    server.proc.send_signal(signal.SIGTERM)
                    # Sight marks itself draining in the signal handler, before uvicorn logs its shutdown.
                    wait_until(lambda: "Shutting down" in server.output(), "uvicorn shutting down", timeout=30)
                    llm.gate.set()
        assert server.proc.wait(timeout=30) in (0, -signal.SIGTERM), "exits by itself (uvicorn re-raises SIGTERM)"
    finally:
        server.stop()
    assert lines[-1]["status"] == "complete", lines
    finals = [x for x in lines if x["status"] in {"done", "error"}]
    assert sorted(x["index"] for x in finals) == [0, 1, 2, 3, 4]
    assert finals[0]["status"] == "done", "the item already running finished"
    assert {x["error"]["code"] for x in finals if x["status"] == "error"} == {"cancelled"}
    assert lines[-1]["summary"]["error"] >= 3
