"""Session runs on the CPU share one pool of slots (usable cores / threads per run), across requests and
models, so concurrent work never oversubscribes the cores; a GPU detector has slots of its own."""

from __future__ import annotations

import base64
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from sight.api.app import create_app
from sight.config import Settings
from sight.core.catalog import ModelEntry
from sight.engines.base import Detection, DetectOptions, Detector
from sight.engines.cpus import usable_cpus
from sight.engines.registry import EngineRegistry
from tests.helpers import image_bytes
from tests.servers import LiveServer

V2 = "/api/v1/inference/predict/batch/v2"


class CountingDetector:
    """A real detector that records how many of its own and its siblings' runs overlap."""

    def __init__(self, inner: Detector, name: str, shared: dict[str, int], lock: threading.Lock,
                 providers: list[str] | None = None) -> None:
        self.inner, self.name, self.version = inner, name, "1"
        self.shared, self.lock = shared, lock
        self.providers = providers or list(getattr(inner, "providers", ["CPUExecutionProvider"]))

    def detect(self, image: Image.Image, options: DetectOptions) -> list[Detection]:
        with self.lock:
            self.shared["now"] += 1
            self.shared["peak"] = max(self.shared["peak"], self.shared["now"])
        try:
            time.sleep(0.05)  # widen the window in which runs could overlap
            return self.inner.detect(image, options)
        finally:
            with self.lock:
                self.shared["now"] -= 1


def _with(settings: Settings, **yolo: Any) -> Settings:
    return settings.model_copy(update={"yolo": settings.yolo.model_copy(update=yolo)})


def _entry(registry: EngineRegistry, name: str) -> ModelEntry:
    entry = registry.detector_entry(name)
    registry.detector_for(entry)
    return entry


def test_cpu_detectors_share_one_pool_sized_by_cores_and_threads(settings: Settings,
                                                                 nudenet_detector: Detector) -> None:
    registry = EngineRegistry(_with(settings, intra_op_threads=1),
                              detectors={"a": nudenet_detector, "b": nudenet_detector})
    a, b = _entry(registry, "a"), _entry(registry, "b")
    assert registry.run_slots(a) is registry.run_slots(b)
    assert registry.run_slots(a).total_tokens == usable_cpus()
    whole = EngineRegistry(_with(settings, intra_op_threads=0), detectors={"a": nudenet_detector})
    assert whole.run_slots(_entry(whole, "a")).total_tokens == 1, "a run using every core gets the CPU alone"
    fixed = EngineRegistry(_with(settings, concurrency=3), detectors={"a": nudenet_detector})
    assert fixed.run_slots(_entry(fixed, "a")).total_tokens == 3
    # The pool outlives a reload, so old and new snapshots do not each get a full set of slots.
    assert registry.successor(registry.build_catalog()).run_slots(a) is registry.run_slots(a)


def test_a_gpu_detector_has_its_own_slots(settings: Settings, nudenet_detector: Detector) -> None:
    lock = threading.Lock()
    gpu = CountingDetector(nudenet_detector, "g", {"now": 0, "peak": 0}, lock, ["CUDAExecutionProvider"])
    registry = EngineRegistry(settings, detectors={"g": gpu, "c": nudenet_detector})
    g, c = _entry(registry, "g"), _entry(registry, "c")
    assert registry.run_slots(g) is not registry.run_slots(c)
    assert registry.run_slots(g).total_tokens == 1


def test_usable_cpus_honours_a_container_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("50000 100000\n")
    assert usable_cpus(cpu_max) == 1
    cpu_max.write_text("250000 100000\n")
    assert usable_cpus(cpu_max) == min(affinity, 3)
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) == affinity
    assert usable_cpus(tmp_path / "absent") == affinity


@pytest.mark.parametrize("slots", [1, 2])
def test_concurrent_requests_for_two_models_never_exceed_the_slots(
    settings: Settings, nudenet_detector: Detector, slots: int
) -> None:
    shared, lock = {"now": 0, "peak": 0}, threading.Lock()
    detectors = {name: CountingDetector(nudenet_detector, name, shared, lock) for name in ("a", "b")}
    cfg = _with(settings, concurrency=slots)
    face = base64.b64encode(image_bytes("astronaut.png")).decode()
    with LiveServer(create_app(cfg, engines=EngineRegistry(cfg, detectors=detectors))) as live:
        key, _ = live.call(live.app.state.services.keys.create_key, "t")

        def post(model: str) -> list[dict[str, Any]]:
            body = {"api_key": key, "data": [{"image_base64": face, "is_yolo": True, "yolo_model": model}] * 3}
            r = httpx.post(live.url + V2, json=body, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["result"]["items"]  # type: ignore[no-any-return]

        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(post, ["a", "b"] * 3))
    for items in results:
        assert [i["status"] for i in items] == ["done"] * 3
        assert items[0]["yolo"]["detections"][0]["name"] == "FACE_FEMALE"
    assert shared["peak"] == slots, f"{shared['peak']} session runs overlapped with {slots} slot(s)"
