"""GPU-style batching of concurrent detections (exercised on CPU), and the metrics that show the queue."""

from __future__ import annotations

import base64
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from fastapi.testclient import TestClient

from sight.api.app import create_app
from sight.config import Settings
from sight.engines.registry import EngineRegistry
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
        update={"batch_max_size": 8, "batch_max_wait_ms": 500})})
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
