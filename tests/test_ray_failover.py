"""A whole worker node of a Ray cluster removed while a stream runs: no item lost, on a cluster of its own (the
removal changes where Serve places replicas for whatever runs after it). Public Ray APIs only; every wait is on
an event, bounded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sight.api.app import create_app
from tests.ray_cluster import (
    CLUSTER_MARKS,
    DETECTOR,
    RayServed,
    b64,
    create_key,
    finals,
    import_ray,
    places,
    settings_for,
    sight_on_ray,
    stream,
    wait_running,
)
from tests.servers import FakeLLMServer, LiveServer

pytestmark = CLUSTER_MARKS
APP = "sight"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, llm_server: FakeLLMServer) -> Iterator[RayServed]:
    with sight_on_ray(tmp_path_factory.mktemp("ray-failover"), llm_server.url) as ray_served:
        yield ray_served


def test_ray_runtime_worker_node_removed_mid_stream_loses_no_item(served: RayServed, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A whole worker node goes (its raylet and every actor on it) while a stream runs: the calls on its
    detector replica fail over to the head's (bounded retries), every item ends once, the stream completes.
    The API runs in this process (the driver, on the head node), so whatever else Serve placed on the worker
    (its proxy, the application's API replica) does not decide the outcome. A node like it is added back
    after, and Serve brings the detector to two replicas again."""
    ray, _serve, _cluster = import_ray()
    cluster = served.cluster
    head = cluster.head_node.node_id
    (worker,) = [n for n in cluster.worker_nodes if n.node_id != head]
    assert worker.node_id in {p.node for p in places(served.settings)}, "a detector replica runs on the worker"
    settings = settings_for(tmp_path, kind="ray", app_name=APP, retries=3)
    key = create_key(settings)
    removed: list[int] = []

    def remove_after_a_few(line: dict[str, Any]) -> None:
        if line["status"] in {"done", "error"} and not removed:
            removed.append(line["index"])
            cluster.remove_node(worker)

    data = [{"image_base64": b64("bus.jpg"), "is_yolo": True} for _ in range(24)]
    caplog.set_level("WARNING", logger="sight.runtimes.ray.client")
    try:
        with LiveServer(create_app(settings)) as live:
            lines = stream(live.url, key, data, on_line=remove_after_a_few)
    finally:
        if removed:
            cluster.add_node(num_cpus=2)
    assert removed, "the node was removed while the stream ran"
    assert not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == worker.node_id), "the node is gone"
    ended = finals(lines)
    assert sorted(ended) == list(range(24)), "every item ends in exactly one final state"
    assert lines[-1]["status"] == "complete" and sum(x["status"] == "complete" for x in lines) == 1
    # Retries are bounded (runtime.retries) and land on the head's replica: no item fails for the removal.
    assert all(x["status"] == "done" for x in ended.values()), [x for x in ended.values() if x["status"] != "done"]
    retried = [r.getMessage() for r in caplog.records if "replica lost" in r.getMessage()]
    assert len(retried) <= settings.runtime.retries * len(data), retried
    wait_running(DETECTOR, timeout=60)  # two replicas again (where Serve places the new one is its choice)
