"""GPU-style batching of concurrent detections (exercised on CPU), and the metrics that show the queue."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sight.api.app import create_app
from sight.config import Settings
from sight.engines.base import Detection, DetectOptions, Detector
from sight.engines.onnx_yolo import OnnxYoloDetector
from sight.metrics import Metrics
from sight.models.registry import EngineRegistry
from sight.runtimes.batching import DetectionBatcher
from sight.runtimes.local import LocalRuntime
from sight.runtimes.slots import RunSlots
from tests.conftest import nudenet_path
from tests.helpers import image_bytes, v1_request
from tests.servers import LiveServer

V2 = "/api/v1/inference/predict/batch/v2"


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_concurrent_requests_share_session_calls_with_per_image_options(
    settings: Settings, engines: EngineRegistry
) -> None:
    cfg = settings.model_copy(update={"yolo": settings.yolo.model_copy(
        update={"batch_max_size": 8, "batch_max_wait_ms": 500, "batch_on_cpu": True})})
    face = base64.b64encode(image_bytes("astronaut.png")).decode()
    batched = EngineRegistry(cfg, detectors={"nudenet": engines.detector("nudenet")})
    with LiveServer(create_app(cfg, engines=batched)) as live:
        key, _ = live.call(live.app.state.services.keys.create_key, "t")

        def post(conf: float) -> dict[str, Any]:
            body = {"api_key": key, "data": [{"image_base64": face, "is_yolo": True, "conf": conf}]}
            return httpx.post(live.url + V2, json=body, timeout=60).json()  # type: ignore[no-any-return]

        confs = [0.25, 0.99, 0.25, 0.99, 0.25, 0.99]
        with ThreadPoolExecutor(max_workers=len(confs)) as pool:
            results = list(pool.map(post, confs))
        metrics = httpx.get(live.url + "/metrics", timeout=10).text
    for conf, body in zip(confs, results, strict=True):
        detections = body["result"]["items"][0]["yolo"]["detections"]
        assert (detections == []) == (conf == 0.99), "each image keeps its own threshold inside a batch"
    calls = _metric(metrics, 'sight_batch_size_count{model="nudenet:1"}')
    images = _metric(metrics, 'sight_batch_size_sum{model="nudenet:1"}')
    assert images == 6 and calls < 6, f"{images} images in {calls} session calls"


def test_metrics_expose_queue_batches_stages_and_refusals(client: TestClient, api_key: str) -> None:
    client.post("/api/v1/inference/predict/batch",
                **v1_request([("a.png", image_bytes("astronaut.png"))], [{"is_yolo": True, "is_ocr": True}],
                             api_key=api_key))
    text = client.get("/metrics").text
    for stage in ("decode", "yolo", "ocr"):
        assert f'sight_stage_seconds_count{{stage="{stage}"}} 1.0' in text
    assert 'sight_model_queue_depth{model="nudenet:1"} 0.0' in text
    assert 'sight_batch_size_count{model="nudenet:1"} 1.0' in text
    assert "sight_rejected_total" in text or "# TYPE sight_rejected counter" in text
    assert "sight_cancelled_items_total 0.0" in text


def test_cpu_detectors_take_the_direct_path_unless_gathering_on_cpu_is_asked(
    settings: Settings, nudenet_detector: Detector
) -> None:
    on = settings.model_copy(update={"yolo": settings.yolo.model_copy(update={"batch_max_size": 8})})
    registry = EngineRegistry(on, detectors={"n": nudenet_detector})
    entry = registry.detector_entry("n")
    detector = registry.detector_for(entry)
    runtime = LocalRuntime(on, Metrics())
    assert runtime.batcher(registry, entry, detector, lambda _n: None) is None, "gathering buys a CPU nothing"
    forced = on.model_copy(update={"yolo": on.yolo.model_copy(update={"batch_on_cpu": True})})
    registry = EngineRegistry(forced, detectors={"n": nudenet_detector})
    detector = registry.detector_for(entry)
    runtime = LocalRuntime(forced, Metrics())
    batcher = runtime.batcher(registry, entry, detector, lambda _n: None)
    assert batcher is not None and runtime.batcher(registry, entry, detector, lambda _n: None) is batcher
    # A reload that replaces the model: the new detector gets its own; the old one, idle, is let go.
    replaced = EngineRegistry(forced, detectors={"n": OnnxYoloDetector.load("n", nudenet_path())})
    again = replaced.detector_for(entry)
    fresh = runtime.batcher(replaced, entry, again, lambda _n: None)
    assert fresh is not None and fresh is not batcher and fresh.detector is again
    assert runtime.batchers == [fresh], "the replaced detector's batcher is gone"


class OverlapCounter:
    """The real detector, counting session calls and how many overlap; the first two calls wait for each
    other, so a batcher that ran its batches one at a time would break the barrier (and fail the images)."""

    def __init__(self, inner: OnnxYoloDetector) -> None:
        self.inner, self.name = inner, inner.name
        self.calls = self.now = self.peak = 0
        self.lock = threading.Lock()
        self.meet = threading.Barrier(2, timeout=60)

    def detect_batch(self, jobs: Sequence[tuple[Image.Image, DetectOptions]]) -> list[list[Detection]]:
        with self.lock:
            self.calls += 1
            self.now += 1
            self.peak = max(self.peak, self.now)
            meets = self.calls <= self.meet.parties
        try:
            if meets:
                self.meet.wait()
            return self.inner.detect_batch(jobs)
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.anyio
async def test_gathered_batches_run_side_by_side_when_there_are_slots(nudenet_detector: OnnxYoloDetector) -> None:
    counter = OverlapCounter(nudenet_detector)
    batcher = DetectionBatcher(counter, max_size=2, max_wait=0.001, slots=RunSlots(2))
    face = Image.open(io.BytesIO(image_bytes("astronaut.png"))).convert("RGB")
    found = await asyncio.gather(*(batcher.detect(face, DetectOptions()) for _ in range(8)))
    assert all(f[0].name == "FACE_FEMALE" for f in found)
    assert counter.calls < 8 and counter.peak == 2, f"{counter.calls} calls, {counter.peak} at once"
    assert batcher.slots.free == 2
