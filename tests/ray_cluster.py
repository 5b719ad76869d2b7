"""What the Ray tests share: settings, a local multi-node cluster with Sight's Serve application on it, and the
places (replica, node, process) that the Ray runtime's answers report. Public Ray APIs only."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from sight.config import (
    LLMSettings,
    ModelsSettings,
    ReplicaSettings,
    RuntimeSettings,
    ServerSettings,
    Settings,
    YoloSettings,
)
from sight.runtimes.base import Place
from tests.conftest import IMAGES, nudenet_path
from tests.helpers import wait_until

# The marks of the tests that start a Ray cluster: slow (they start processes), bounded, and quiet about the
# warnings Ray's own imports raise.
CLUSTER_MARKS = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::DeprecationWarning"),
                 pytest.mark.filterwarnings("ignore::ResourceWarning")]


STREAM = "/api/v1/inference/predict/stream/v2"
DETECTOR = "detect-nudenet-v1"
APP = "sight"


def import_ray() -> tuple[Any, Any, Any]:
    """(ray, serve, Cluster): Ray is imported by the tests that use it, not when pytest collects their modules
    (the rest of the suite runs without it in the process); its own pydantic deprecations are not ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster
    return ray, serve, Cluster


def settings_for(tmp: Path, **runtime: Any) -> Settings:
    return Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp / 'sight.db'}",
        data_dir=tmp / "data",
        server=ServerSettings(max_files=64, item_concurrency=4),
        yolo=YoloSettings(models={"nudenet": nudenet_path()}, default_model="nudenet"),
        models=ModelsSettings(offline=True),
        runtime=RuntimeSettings(**runtime),
    )


def b64(name: str) -> str:
    return base64.b64encode((IMAGES / name).read_bytes()).decode()


def create_key(settings: Settings) -> str:
    from sight.cli.keys import with_keys

    async def create(store: Any) -> str:
        key, _info = await store.create_key("team-ray", name="ray")
        return str(key)

    return with_keys(settings, create)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RayServed:
    def __init__(self, settings: Settings, url: str, key: str, cluster: Any) -> None:
        self.settings, self.url, self.key, self.cluster = settings, url, key, cluster


@contextmanager
def sight_on_ray(tmp: Path, llm_url: str, prepare: Any = None) -> Iterator[RayServed]:
    """Two nodes (2 logical CPUs each) and Sight's application on them: two detector replicas, OCR, the LLM
    clients (to ``llm_url``), the API. ``prepare(settings)`` may change the settings first."""
    from sight.serve_app import build

    ray, serve, Cluster = import_ray()  # noqa: N806
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
    try:
        tiny = ReplicaSettings(num_cpus=0.25, min_replicas=1, max_replicas=1, max_ongoing_requests=16)
        settings = settings_for(tmp, kind="ray", app_name=APP, retries=3, ocr=tiny, api=tiny, llm=tiny,
                                # 2 at once per replica, 4 items at once per stream: both replicas are needed
                                detector=ReplicaSettings(num_cpus=0.5, min_replicas=2, max_replicas=2,
                                                         max_ongoing_requests=2))
        settings.llm = LLMSettings(base_url=llm_url, model="fake-vl", discover=False)
        if prepare is not None:
            prepare(settings)
        key = create_key(settings)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build(settings), name=APP, route_prefix="/")  # returns once every deployment is running
        yield RayServed(settings, f"http://127.0.0.1:{port}", key, cluster)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def places(settings: Settings, calls: int = 24) -> list[Place]:
    """Where the detector's replicas answered ``calls`` detections sent at once through the Ray runtime (at
    most 2 at a time per replica: both replicas answer)."""
    from sight.engines.base import DetectOptions
    from sight.models.registry import EngineRegistry
    from sight.runtimes.base import Picture
    from sight.runtimes.ray.client import RayRuntime

    runtime = RayRuntime(settings)
    engines = EngineRegistry(settings)
    entry = engines.catalog.model("nudenet", task="detect")
    data = (IMAGES / "astronaut.png").read_bytes()

    async def burst() -> list[Any]:
        return await asyncio.gather(*(runtime.detect(engines, entry, Picture(data=data), DetectOptions())
                                      for _ in range(calls)))

    seen = asyncio.run(burst())
    assert all(s.value and s.value[0].name == "FACE_FEMALE" for s in seen)
    found = [s.place for s in seen]
    assert all(p is not None for p in found), "every replica says where it ran"
    return found  # type: ignore[return-value]


def running_replicas(deployment: str) -> int:
    """Replicas of ``deployment`` Serve reports RUNNING (0 while it is not HEALTHY)."""
    _ray, serve, _cluster = import_ray()
    status = serve.status().applications[APP].deployments[deployment]
    if getattr(status.status, "value", status.status) != "HEALTHY":
        return 0
    return int(sum(n for state, n in status.replica_states.items() if getattr(state, "value", state) == "RUNNING"))


def wait_running(deployment: str, replicas: int = 2, timeout: float = 30) -> None:
    wait_until(lambda: running_replicas(deployment) == replicas, f"{deployment} back to {replicas} replicas",
               timeout=timeout, poll=0.05)


def stream(url: str, key: str, data: list[dict[str, Any]], on_line: Any = None) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    with httpx.stream("POST", url + STREAM, json={"api_key": key, "data": data}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for raw in r.iter_lines():
            lines.append(json.loads(raw))
            if on_line is not None:
                on_line(lines[-1])
    return lines


def finals(lines: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    ended = [x for x in lines if x["status"] in {"done", "error"}]
    by_index = {x["index"]: x for x in ended}
    assert len(by_index) == len(ended), "an item ended more than once"
    return by_index
