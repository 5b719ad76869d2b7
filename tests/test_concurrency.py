"""Several clients at once over real sockets: correct answers, and the event loop stays free."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from sight.api.app import create_app
from sight.config import Settings
from sight.models.registry import EngineRegistry
from tests.helpers import image_bytes
from tests.servers import LiveServer

BATCH = "/api/v1/inference/predict/batch"


def _post(url: str, key: str, name: str, meta: dict) -> dict:  # type: ignore[type-arg]
    r = httpx.post(
        url + BATCH,
        data={"api_key": key, "metadata": [json.dumps(meta)] * 3},
        files=[("files", (name, image_bytes(name)))] * 3,
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_concurrent_clients_get_their_own_correct_results(live: LiveServer) -> None:
    key, _ = live.call(live.app.state.services.keys.create_key, "team-c")
    jobs = [("astronaut.png", {"is_yolo": True}), ("coffee.png", {"is_yolo": True}),
            ("serial-label.png", {"is_ocr": True})] * 2
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(lambda job: _post(live.url, key, *job), jobs))
    for (name, _meta), body in zip(jobs, results, strict=True):
        items = body["result"]["items"]
        assert [i["filename"] for i in items] == [name] * 3
        assert all(i["status"] == "done" for i in items)
        if name == "astronaut.png":
            assert all(i["yolo"]["detections"][0]["name"] == "FACE_FEMALE" for i in items)
        elif name == "coffee.png":
            assert all(not [d for d in i["yolo"]["detections"] if d["confidence"] > 0.3] for i in items)
        else:
            assert all("SN-4X7Q-2291-B" in i["ocr"]["text"] for i in items)


class _Recording:
    """A real engine that notes, for each call, whether it ran on a thread that runs an event loop."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.on_loop: list[bool] = []

    def _note(self) -> None:
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)

    def detect(self, image: Any, options: Any, **kw: Any) -> Any:
        self._note()
        return self.inner.detect(image, options, **kw)

    def read(self, image: Any) -> Any:
        self._note()
        return self.inner.read(image)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_inference_does_not_block_the_event_loop(settings: Settings, nudenet_detector: Any, ocr_engine: Any) -> None:
    """Every model call runs off the event loop (checked per call, not timed), and the server keeps
    answering /healthz while inference runs."""
    detector, ocr = _Recording(nudenet_detector), _Recording(ocr_engine)
    engines = EngineRegistry(settings, detectors={"nudenet": detector}, ocr=ocr)  # type: ignore[dict-item]
    with LiveServer(create_app(settings, engines=engines)) as live:
        key, _ = live.call(live.app.state.services.keys.create_key, "team-c")
        with ThreadPoolExecutor(max_workers=4) as pool:
            busy = [pool.submit(_post, live.url, key, "serial-label.png", {"is_ocr": True, "is_yolo": True})
                    for _ in range(3)]
            answered = 0
            while not all(f.done() for f in busy) and answered < 10_000:
                assert httpx.get(live.url + "/healthz", timeout=30).status_code == 200
                answered += 1
            for f in busy:
                f.result()
    assert answered >= 1
    assert len(detector.on_loop) == len(ocr.on_loop) == 9
    assert not any(detector.on_loop + ocr.on_loop), "a model ran on the event loop's thread"
