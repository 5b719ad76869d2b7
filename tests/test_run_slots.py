"""Session runs on the CPU share one pool of slots (usable cores / threads per run), across requests and
models, so concurrent work never oversubscribes the cores; a lone run on an idle pool takes every slot and
runs over every core; a GPU detector has slots of its own."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from sight.api.app import create_app
from sight.config import Settings
from sight.engines.base import Detection, DetectOptions, Detector
from sight.engines.cpus import usable_cpus
from sight.engines.onnx_yolo import OnnxYoloDetector
from sight.metrics import Metrics
from sight.models.catalog import ModelEntry
from sight.models.registry import EngineRegistry
from sight.runtimes.base import Picture
from sight.runtimes.local import LocalRuntime
from sight.runtimes.slots import RunSlots
from tests.conftest import nudenet_path
from tests.helpers import image_bytes, wait_until
from tests.servers import LiveServer

V2 = "/api/v1/inference/predict/batch/v2"
CORES = usable_cpus()


class CountingDetector:
    """A real detector that records how many cores its own and its siblings' runs hold at once. ``meet``: the
    first ``meet.parties`` runs wait for each other, so they must overlap (a pool that ran them one at a time
    breaks the barrier). ``gate``: every run waits for it to open, so it stays under way while the test acts."""

    def __init__(self, inner: OnnxYoloDetector, name: str, shared: dict[str, int], lock: threading.Lock, *,
                 providers: list[str] | None = None, wide_cores: int = 0, meet: threading.Barrier | None = None,
                 gate: threading.Event | None = None) -> None:
        self.inner, self.name, self.version = inner, name, "1"
        self.shared, self.lock = shared, lock
        self.providers = providers or inner.providers
        self.wide_cores = wide_cores
        self.meet, self.gate = meet, gate
        if wide_cores:
            self.can_run_wide = True

    def detect(self, image: Image.Image, options: DetectOptions, *, wide: bool = False) -> list[Detection]:
        cores = self.wide_cores if wide else 1
        with self.lock:
            self.shared["now"] += cores
            self.shared["peak"] = max(self.shared["peak"], self.shared["now"])
            self.shared["wide"] += wide
            self.shared["runs"] += 1
            meet = self.meet if self.meet and self.shared["runs"] <= self.meet.parties else None
        try:
            if meet:
                meet.wait()  # raises BrokenBarrierError (the image fails) if the others never come
            if self.gate is not None and not self.gate.wait(60):
                raise TimeoutError("the test never opened the gate")
            return self.inner.detect(image, options, wide=wide)
        finally:
            with self.lock:
                self.shared["now"] -= cores


def _with(settings: Settings, **yolo: Any) -> Settings:
    return settings.model_copy(update={"yolo": settings.yolo.model_copy(update=yolo)})


def _entry(registry: EngineRegistry, name: str) -> ModelEntry:
    entry = registry.detector_entry(name)
    registry.detector_for(entry)
    return entry


def _counter() -> dict[str, int]:
    return {"now": 0, "peak": 0, "wide": 0, "runs": 0}


def test_cpu_detectors_share_one_pool_sized_by_cores_and_threads(settings: Settings,
                                                                 nudenet_detector: Detector) -> None:
    narrow = _with(settings, intra_op_threads=1)
    registry = EngineRegistry(narrow, detectors={"a": nudenet_detector, "b": nudenet_detector})
    runtime = LocalRuntime(narrow, Metrics())
    a, b = _entry(registry, "a"), _entry(registry, "b")
    assert runtime.run_slots(a, nudenet_detector) is runtime.run_slots(b, nudenet_detector)
    assert runtime.run_slots(a, nudenet_detector).capacity == CORES
    whole = EngineRegistry(_with(settings, intra_op_threads=0), detectors={"a": nudenet_detector})
    whole_runtime = LocalRuntime(whole.settings, Metrics())
    assert whole_runtime.run_slots(_entry(whole, "a"), nudenet_detector).capacity == 1, \
        "a run using every core gets the CPU alone"
    fixed = EngineRegistry(_with(settings, concurrency=3), detectors={"a": nudenet_detector})
    assert LocalRuntime(fixed.settings, Metrics()).run_slots(_entry(fixed, "a"), nudenet_detector).capacity == 3
    # The pool lives in the runtime, which outlives a reload: old and new snapshots share one set of slots.
    successor = registry.successor(registry.build_catalog())
    again = successor.catalog.model("a", task="detect")
    assert runtime.run_slots(again, successor.detector_for(again)) is runtime.run_slots(a, nudenet_detector)


def test_a_gpu_detector_has_its_own_slots(settings: Settings, nudenet_detector: OnnxYoloDetector) -> None:
    gpu = CountingDetector(nudenet_detector, "g", _counter(), threading.Lock(), providers=["CUDAExecutionProvider"])
    registry = EngineRegistry(settings, detectors={"g": gpu, "c": nudenet_detector})
    runtime = LocalRuntime(settings, Metrics())
    g, c = _entry(registry, "g"), _entry(registry, "c")
    assert runtime.run_slots(g, gpu) is not runtime.run_slots(c, nudenet_detector)
    assert runtime.run_slots(g, gpu).capacity == 1


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


def test_wide_and_narrow_sessions_find_the_same_objects() -> None:
    detector = OnnxYoloDetector.load("nudenet", nudenet_path(), intra_op_threads=1, wide_threads=2)
    assert detector.can_run_wide and detector.wide_session is not None
    assert detector.wide_session.get_session_options().intra_op_num_threads == 2
    # Its pool threads spin during a run, and stop when it returns: never on cores the narrow runs take next.
    wide_options = detector.wide_session.get_session_options()
    assert wide_options.get_session_config_entry("session.force_spinning_stop") == "1"
    with pytest.raises(Exception, match="does not have configuration"):  # spinning left allowed
        wide_options.get_session_config_entry("session.intra_op.allow_spinning")
    assert detector.session.get_session_options().intra_op_num_threads == 1
    for session in (detector.session, detector.wide_session):  # one arena of activations for both
        assert session.get_session_options().get_session_config_entry("session.use_env_allocators") == "1"
    assert not OnnxYoloDetector.load("n", nudenet_path(), intra_op_threads=0, wide_threads=2).can_run_wide
    image = Image.open(io.BytesIO(image_bytes("astronaut.png")))
    narrow = detector.detect(image, DetectOptions())
    wide = detector.detect(image, DetectOptions(), wide=True)
    assert [d.name for d in wide] == [d.name for d in narrow] and narrow[0].name == "FACE_FEMALE"
    for w, n in zip(wide, narrow, strict=True):
        assert abs(w.confidence - n.confidence) < 1e-3


# --- RunSlots ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_idle_pool_grants_every_slot_and_a_busy_one_grants_one() -> None:
    slots = RunSlots(4)
    assert await slots.acquire(wide_ok=True) == 4 and slots.free == 0
    slots.release(4)
    assert await slots.acquire(wide_ok=False) == 1
    assert await slots.acquire(wide_ok=True) == 1, "another run is in flight: one slot only"
    assert slots.free == 2
    slots.release(1)
    slots.release(1)
    assert slots.free == 4 and slots.wide_runs == 1
    assert await RunSlots(1).acquire(wide_ok=True) == 1, "one slot is not wide"


@pytest.mark.anyio
async def test_contended_slots_are_never_overdrawn_and_served_in_order() -> None:
    slots = RunSlots(3)
    held, peak, order, asked = 0, 0, [], 0
    everyone_asked = asyncio.Event()  # the first holders keep their slots until all 20 queue behind them

    async def run(i: int, wide_ok: bool) -> None:
        nonlocal held, peak, asked
        asked += 1
        if asked == 20:
            everyone_asked.set()  # the holders wake only after this run's acquire below has queued it
        taken = await slots.acquire(wide_ok=wide_ok)
        held += taken
        peak = max(peak, held)
        order.append(i)
        await everyone_asked.wait()
        held -= taken
        slots.release(taken)

    await asyncio.gather(*(run(i, i % 2 == 0) for i in range(20)))
    assert peak <= 3 and slots.free == 3
    assert order == list(range(20)), "first come, first served"


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaks_no_slot() -> None:
    slots = RunSlots(2)
    taken = await slots.acquire(wide_ok=True)  # holds both
    asking = asyncio.Event()

    async def ask() -> int:
        asking.set()  # this test runs again only once the acquire below has queued
        return await slots.acquire(wide_ok=True)

    waiter = asyncio.create_task(ask())
    await asking.wait()
    assert slots.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slots.release(taken)
    assert slots.free == 2 and slots.waiting == 0
    assert await slots.acquire(wide_ok=True) == 2


@pytest.mark.anyio
async def test_call_runs_in_a_thread_and_holds_its_slots_past_a_cancelled_caller() -> None:
    slots = RunSlots(2)
    running, gate = threading.Event(), threading.Event()
    assert await slots.call(lambda wide: threading.current_thread() is not threading.main_thread() and wide,
                            wide_ok=True)

    def held(_wide: bool) -> bool:
        running.set()
        return gate.wait(60)

    caller = asyncio.create_task(slots.call(held))
    assert await anyio.to_thread.run_sync(running.wait, 60), "the run never started in its thread"
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert slots.free == 1, "the thread still runs, so its slot is still taken"
    gate.set()
    # The slot comes back on this loop once the thread has returned: wait for it off the loop.
    await anyio.to_thread.run_sync(partial(wait_until, lambda: slots.free == 2, "the slot given back"))
    assert slots.free == 2


# --- Through the server -----------------------------------------------------------------------------


def _serve(cfg: Settings, detectors: dict[str, Any], posts: list[tuple[str, int]]) -> list[list[dict[str, Any]]]:
    face = base64.b64encode(image_bytes("astronaut.png")).decode()
    with LiveServer(create_app(cfg, engines=EngineRegistry(cfg, detectors=detectors))) as live:
        key, _ = live.call(live.app.state.services.keys.create_key, "t")

        def post(job: tuple[str, int]) -> list[dict[str, Any]]:
            model, images = job
            body = {"api_key": key, "data": [{"image_base64": face, "is_yolo": True, "yolo_model": model}] * images}
            r = httpx.post(live.url + V2, json=body, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["result"]["items"]  # type: ignore[no-any-return]

        with ThreadPoolExecutor(max_workers=len(posts)) as pool:
            results = list(pool.map(post, posts))
    for items in results:
        assert all(i["status"] == "done" for i in items)
        assert all(i["yolo"]["detections"][0]["name"] == "FACE_FEMALE" for i in items)
    return results


@pytest.mark.parametrize("slots", [1, 2])
def test_concurrent_requests_for_two_models_never_exceed_the_slots(
    settings: Settings, nudenet_detector: OnnxYoloDetector, slots: int
) -> None:
    shared, lock = _counter(), threading.Lock()
    meet = threading.Barrier(slots, timeout=60)  # the first runs fill every slot at once
    detectors = {name: CountingDetector(nudenet_detector, name, shared, lock, meet=meet) for name in ("a", "b")}
    _serve(_with(settings, concurrency=slots), detectors, [("a", 3), ("b", 3)] * 3)
    assert shared["peak"] == slots, f"{shared['peak']} session runs overlapped with {slots} slot(s)"


def test_a_lone_image_runs_wide_and_a_crowd_runs_narrow(settings: Settings,
                                                        nudenet_detector: OnnxYoloDetector) -> None:
    cfg = _with(settings, concurrency=2)  # two slots, whatever this machine has
    shared, lock = _counter(), threading.Lock()
    detector = CountingDetector(nudenet_detector, "a", shared, lock, wide_cores=2)
    _serve(cfg, {"a": detector}, [("a", 1)])
    assert shared["wide"] == 1 and shared["peak"] == 2, "a lone image on an idle server uses every core"

    several = _counter()
    detector.shared = several
    _serve(cfg, {"a": detector}, [("a", 4)])
    assert several["wide"] == 0, "images of one request keep the cores busy one run each"

    crowd = _counter()
    detector.shared = crowd
    _serve(cfg, {"a": detector}, [("a", 4), ("a", 1)] * 4)
    assert crowd["peak"] <= 2, f"runs held {crowd['peak']} cores, with two slots"
    assert crowd["wide"] <= 4, "only lone images may go wide, and only when the slots are idle"


def test_a_cancelled_run_holds_its_slot_until_the_session_returns(settings: Settings,
                                                                   nudenet_detector: OnnxYoloDetector) -> None:
    """A client that goes away cancels its items, but the session run already under way cannot be stopped:
    its slot stays taken until it returns, or the next run would oversubscribe the cores."""
    shared, lock, gate = _counter(), threading.Lock(), threading.Event()
    cfg = _with(settings, concurrency=1)
    registry = EngineRegistry(cfg, detectors={"a": CountingDetector(nudenet_detector, "a", shared, lock, gate=gate)})
    app = create_app(cfg, engines=registry)
    face = Picture(Image.open(io.BytesIO(image_bytes("astronaut.png"))).convert("RGB"))

    async def start() -> asyncio.Task[Any]:
        pipeline = app.state.services.pipeline  # the app's services exist once its lifespan has started
        return asyncio.create_task(pipeline.detect(pipeline.hub.current, face, "a", DetectOptions()))

    async def cancel(task: asyncio.Task[Any]) -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def finish(task: asyncio.Task[Any]) -> Any:
        return await task

    async def waiting() -> int:
        runtime = app.state.services.pipeline.runtime
        entry = registry.detector_entry("a")
        return int(runtime.run_slots(entry, registry.loaded_detector(entry)).waiting)

    with LiveServer(app) as live:
        try:
            first = live.call(start)
            wait_until(lambda: shared["now"], "the first run under way")
            live.call(cancel, first)  # its caller is gone; its session run is still held at the gate
            second = live.call(start)
            wait_until(lambda: live.call(waiting) == 1, "the second run waiting for the slot")
        finally:
            gate.set()
        live.call(finish, second)
    assert shared["peak"] == 1, "a cancelled run gave its slot back while still running"
