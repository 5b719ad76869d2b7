"""The Ray runtime on a real two-node Ray cluster (loopback): same results as the local runtime, replicas on
both nodes, a replica killed mid-stream loses no item, an overloaded deployment answers 503.

One cluster and one Serve application for the module; every wait is on an event (a response, Serve's
status), bounded.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from sight.api.app import create_app
from sight.config import (
    LLMSettings,
    ModelsSettings,
    ReplicaSettings,
    RuntimeSettings,
    ServerSettings,
    Settings,
    YoloSettings,
)
from sight.errors import InvalidInputError
from tests.conftest import IMAGES, ROOT, nudenet_path
from tests.helpers import wait_until
from tests.servers import FakeLLMServer, LiveServer

# Ray is imported by the tests that use it, not when pytest collects this module: the rest of the suite runs
# without it in the process.
ray: Any = None
serve: Any = None


def _import_ray() -> Any:
    """Import Ray (skipping without ``sight[ray]``); its own pydantic deprecations are not ours."""
    global ray, serve
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ray = pytest.importorskip("ray", reason="pip install 'sight[ray]'")
        from ray import serve as ray_serve
        from ray.cluster_utils import Cluster
        from ray.serve._private import build_app  # noqa: F401  (the config test's)
    serve = ray_serve
    return Cluster

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::ResourceWarning")]

STREAM = "/api/v1/inference/predict/stream/v2"
DETECTOR = "detect-nudenet-v1"
APP = "sight"


def _settings(tmp: Path, **runtime: Any) -> Settings:
    return Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp / 'sight.db'}",
        data_dir=tmp / "data",
        server=ServerSettings(max_files=64, item_concurrency=4),
        yolo=YoloSettings(models={"nudenet": nudenet_path()}, default_model="nudenet"),
        models=ModelsSettings(offline=True),
        runtime=RuntimeSettings(**runtime),
    )


def _b64(name: str) -> str:
    return base64.b64encode((IMAGES / name).read_bytes()).decode()


def _create_key(settings: Settings) -> str:
    from sight.cli.keys import with_keys

    async def create(store: Any) -> str:
        key, _info = await store.create_key("team-ray", name="ray")
        return str(key)

    return with_keys(settings, create)


class RayServed:
    def __init__(self, settings: Settings, url: str, key: str, cluster: Any = None) -> None:
        self.settings, self.url, self.key, self.cluster = settings, url, key, cluster


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, llm_server: FakeLLMServer) -> Iterator[RayServed]:
    """Two nodes (2 logical CPUs each), Sight's application on them: two detector replicas, OCR, the LLM
    clients (to the loopback LLM), the API."""
    from sight.serve_app import build

    Cluster = _import_ray()  # noqa: N806
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
    try:
        tmp = tmp_path_factory.mktemp("ray")
        tiny = ReplicaSettings(num_cpus=0.25, min_replicas=1, max_replicas=1, max_ongoing_requests=16)
        settings = _settings(tmp, kind="ray", app_name=APP, retries=3, ocr=tiny, api=tiny, llm=tiny,
                             # 2 at once per replica, 4 items at once per stream: both replicas are needed
                             detector=ReplicaSettings(num_cpus=0.5, min_replicas=2, max_replicas=2,
                                                         max_ongoing_requests=2))
        settings.llm = LLMSettings(base_url=llm_server.url, model="fake-vl", discover=False)
        # A detector whose file is not a model: its replica starts, and reports why it cannot serve.
        (tmp / "broken.onnx").write_bytes(b"not an onnx model")
        (tmp / "models.toml").write_text(f'[[model]]\nname = "broken"\nsource = "{tmp / "broken.onnx"}"\n'
                                         'ray = { num_cpus = 0.25, min_replicas = 1, max_replicas = 1 }\n')
        settings.registry.path = tmp / "models.toml"
        key = _create_key(settings)
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build(settings), name=APP, route_prefix="/")  # returns once every deployment is running
        yield RayServed(settings, f"http://127.0.0.1:{port}", key, cluster)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _replicas(deployment: str) -> list[dict[str, Any]]:
    """The live replica actors of ``deployment`` (name, node) from the cluster's actor table."""
    from ray._private import state

    wanted = f"ServeReplica:{APP}:{deployment}"
    return [a for a in state.actors().values() if a["ActorClassName"] == wanted and a["State"] == "ALIVE"]


def _stream(url: str, key: str, data: list[dict[str, Any]], on_line: Any = None) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    with httpx.stream("POST", url + STREAM, json={"api_key": key, "data": data}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for raw in r.iter_lines():
            lines.append(json.loads(raw))
            if on_line is not None:
                on_line(lines[-1])
    return lines


def _finals(lines: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    finals = [x for x in lines if x["status"] in {"done", "error"}]
    by_index = {x["index"]: x for x in finals}
    assert len(by_index) == len(finals), "an item ended more than once"
    return by_index


def _rotated_png() -> str:
    """astronaut.png cut to 512x384, with EXIF orientation 6 (shown turned a quarter: 384x512): a PNG's size
    as shown is known only once decoded."""
    from PIL import Image

    with Image.open(IMAGES / "astronaut.png") as image:
        exif = image.getexif()
        exif[0x0112] = 6
        out = io.BytesIO()
        image.crop((0, 0, 512, 384)).save(out, format="PNG", exif=exif)
    return base64.b64encode(out.getvalue()).decode()


def test_ray_runtime_results_equal_local_runtime(served: RayServed, tmp_path: Path) -> None:
    data = [{"image_base64": _b64(name), "filename": name, "is_yolo": True}
            for name in ("astronaut.png", "bus.jpg", "rocket.jpg", "coffee.png")]
    data.append({"image_base64": _b64("serial-label.png"), "filename": "label.png", "is_ocr": True})
    data.append({"image_base64": _rotated_png(), "filename": "turned.png", "is_yolo": True, "is_ocr": True})
    # bus.jpg with other stages asked too: detection's result does not depend on them, here as in process.
    data.append({"image_base64": _b64("bus.jpg"), "filename": "bus.jpg", "is_yolo": True, "is_ocr": True})
    data.append({"image_base64": _b64("bus.jpg"), "filename": "bus.jpg", "is_yolo": True, "is_llm": True})
    remote = _finals(_stream(served.url, served.key, data))

    local_settings = _settings(tmp_path)
    local_settings.llm = served.settings.llm  # the same loopback LLM
    local_key = _create_key(local_settings)
    with TestClient(create_app(local_settings)) as client:
        r = client.post(STREAM, json={"api_key": local_key, "data": data})
    local = _finals([json.loads(x) for x in r.text.splitlines()])

    assert sorted(remote) == sorted(local) == list(range(len(data)))
    for i in local:
        assert remote[i]["status"] == local[i]["status"] == "done", (remote[i], local[i])
        assert remote[i]["result"]["yolo"] == local[i]["result"]["yolo"]
        assert remote[i]["result"]["ocr"] == local[i]["result"]["ocr"]
        assert remote[i]["result"]["image"] == local[i]["result"]["image"]
    assert remote[0]["result"]["yolo"]["detections"][0]["name"] == "FACE_FEMALE"
    assert "SN-4X7Q-2291-B" in remote[4]["result"]["ocr"]["text"]
    assert remote[5]["result"]["image"] == {"width": 384, "height": 512}
    assert remote[1]["result"]["yolo"] == remote[6]["result"]["yolo"] == remote[7]["result"]["yolo"]
    assert [round(d["confidence"], 3) for d in remote[1]["result"]["yolo"]["detections"]] == [0.264, 0.252]


def test_ray_runtime_api_decodes_no_pixels_for_the_model_stages(served: RayServed, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Detection and OCR items: the API (in this process) checks each header and sends the bytes as
    uploaded; only the replicas decode. A JPEG whose header is sound but whose pixels are cut off fails on
    the replica with invalid_image, and its siblings are done."""
    from sight.images.decode import PendingDecode

    decoded: list[int] = []
    decode = PendingDecode.decode
    monkeypatch.setattr(PendingDecode, "decode", lambda self: decoded.append(1) or decode(self))
    settings = _settings(tmp_path, kind="ray", app_name=APP)
    key = _create_key(settings)
    jpeg = (IMAGES / "bus.jpg").read_bytes()
    data = [{"image_base64": _rotated_png(), "is_yolo": True},
            {"image_base64": base64.b64encode(jpeg[: len(jpeg) // 3]).decode(), "is_yolo": True},
            {"image_base64": _b64("serial-label.png"), "is_ocr": True},
            {"image_base64": _b64("bus.jpg"), "is_yolo": True, "is_ocr": True}]
    with TestClient(create_app(settings)) as client:
        r = client.post(STREAM, json={"api_key": key, "data": data})
    finals = _finals([json.loads(x) for x in r.text.splitlines()])
    assert decoded == [], "the API decoded pixels no stage of its own needed"
    assert finals[0]["status"] == "done" and finals[0]["result"]["yolo"]["detections"], finals[0]
    assert finals[0]["result"]["image"] == {"width": 384, "height": 512}
    assert finals[1]["status"] == "error" and finals[1]["error"]["code"] == "invalid_image", finals[1]
    assert "SN-4X7Q-2291-B" in finals[2]["result"]["ocr"]["text"]
    assert finals[3]["status"] == "done" and finals[3]["result"]["yolo"]["detections"], finals[3]
    assert finals[3]["result"]["ocr"]["text"], finals[3]


def test_ray_runtime_reports_a_model_its_replica_cannot_load(served: RayServed) -> None:
    """The broken detector's replica runs (the application is up), /v1/models says failed with the load
    error its replica met, and its items fail with that reason while the others' run."""
    with TestClient(create_app(served.settings)) as client:
        auth = {"Authorization": f"Bearer {served.key}"}
        models = {m["name"]: m for m in client.get("/v1/models", headers=auth).json()["models"]}
        data = [{"image_base64": _b64("bus.jpg"), "is_yolo": True, "yolo_model": "broken"},
                {"image_base64": _b64("bus.jpg"), "is_yolo": True}]
        r = client.post(STREAM, json={"api_key": served.key, "data": data})
    assert models["broken"]["state"]["state"] == "failed" and not models["broken"]["loaded"], models["broken"]
    assert "failed to load" in models["broken"]["state"]["reason"]
    assert models["nudenet"]["state"]["state"] == "ready"
    finals = _finals([json.loads(x) for x in r.text.splitlines()])
    assert finals[0]["error"]["code"] == "engine_unavailable" and "failed to load" in finals[0]["error"]["message"]
    assert finals[1]["status"] == "done"


def test_ray_runtime_llm_calls_go_through_the_llm_deployment(served: RayServed, llm: FakeLLMServer) -> None:
    """Through the Serve proxy: an OCR + LLM item and a YOLO + LLM item with a query. The LLM deployment asks
    the loopback backend with the grounding, and condenses the two answers into the batch answer."""
    query = "find me the serial number from the images"
    data = [{"image_base64": _b64("serial-label.png"), "filename": "label.png", "is_ocr": True, "is_llm": True},
            {"image_base64": _b64("astronaut.png"), "filename": "astro.png", "is_yolo": True, "is_llm": True}]
    r = httpx.post(served.url + "/api/v1/inference/predict/batch/v2",
                   json={"api_key": served.key, "data": data, "query": query}, timeout=120)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert [i["status"] for i in result["items"]] == ["done", "done"], result
    assert result["items"][0]["llm"]["answer"] == "The serial number is SN-4X7Q-2291-B."
    assert result["items"][0]["llm"]["model"] == "fake-vl"
    assert result["answer"].startswith("CONDENSED:") and "label.png" in result["answer"]
    texts = [FakeLLMServer.user_text(x["body"]) for x in llm.requests if FakeLLMServer.image_urls(x["body"])]
    assert len(texts) == 2 and any("FACE_FEMALE" in t for t in texts), texts
    assert _replicas("llm"), "the LLM deployment runs"


def test_ray_runtime_detector_replicas_on_both_nodes_serve_a_stream(served: RayServed) -> None:
    replicas = _replicas(DETECTOR)
    assert len(replicas) == 2
    assert len({a["Address"]["NodeID"] for a in replicas}) == 2, "Serve spreads replicas over the nodes"
    log_dir = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    before = _calls_per_replica(log_dir)
    data = [{"image_base64": _b64("astronaut.png" if i % 2 else "rocket.jpg"), "is_yolo": True} for i in range(40)]
    lines = _stream(served.url, served.key, data)
    finals = _finals(lines)
    assert sorted(finals) == list(range(40))
    assert all(x["status"] == "done" for x in finals.values())
    assert lines[-1]["status"] == "complete"
    after = _calls_per_replica(log_dir)
    served_by = {name for name, n in after.items() if n > before.get(name, 0)}
    assert len(served_by) == 2, f"both replicas served items: {after} (before: {before})"


def _calls_per_replica(log_dir: Path) -> dict[str, int]:
    """Detector calls each replica logged (Serve writes one access line per call, per replica file)."""
    from sight.runtimes.ray.replicas import DetectorReplica

    return {p.name: p.read_text().count(f"CALL {DetectorReplica.detect.__name__} OK")
            for p in log_dir.glob(f"replica_{APP}_{DETECTOR}_*.log")}


def test_ray_runtime_worker_node_removed_mid_stream_loses_no_item(served: RayServed, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A whole worker node goes (its raylet and every actor on it) while a stream runs: the calls on its
    detector replica fail over to the head's (bounded retries), every item ends once, the stream completes.
    The API runs in this process (the driver, on the head node), so whatever else Serve placed on the worker
    (its proxy, the application's API replica) does not decide the outcome. A node like it is added back
    after, and Serve brings the detector to two replicas again."""
    cluster = served.cluster
    head = cluster.head_node.node_id
    (worker,) = [n for n in cluster.worker_nodes if n.node_id != head]
    # Runs before the replica-kill test, whose replacement replica Serve may place on either node.
    assert any(a["Address"]["NodeID"] == worker.node_id for a in _replicas(DETECTOR)), \
        "a detector replica runs on the worker node"
    settings = _settings(tmp_path, kind="ray", app_name=APP, retries=3)
    key = _create_key(settings)
    removed: list[int] = []

    def remove_after_a_few(line: dict[str, Any]) -> None:
        if line["status"] in {"done", "error"} and not removed:
            removed.append(line["index"])
            cluster.remove_node(worker)

    data = [{"image_base64": _b64("bus.jpg"), "is_yolo": True} for _ in range(24)]
    caplog.set_level("WARNING", logger="sight.runtimes.ray.client")
    try:
        with LiveServer(create_app(settings)) as live:
            lines = _stream(live.url, key, data, on_line=remove_after_a_few)
    finally:
        if removed:
            cluster.add_node(num_cpus=2)
    assert removed, "the node was removed while the stream ran"
    assert not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == worker.node_id), "the node is gone"
    finals = _finals(lines)
    assert sorted(finals) == list(range(24)), "every item ends in exactly one final state"
    assert lines[-1]["status"] == "complete" and sum(x["status"] == "complete" for x in lines) == 1
    # Retries are bounded (runtime.retries) and land on the head's replica: no item fails for the removal.
    assert all(x["status"] == "done" for x in finals.values()), [x for x in finals.values() if x["status"] != "done"]
    # Each call is sent at most runtime.retries more times (the calls in flight on the lost replica, usually 1-2).
    retried = [r.getMessage() for r in caplog.records if "replica lost" in r.getMessage()]
    assert len(retried) <= settings.runtime.retries * len(data), retried
    _wait_running(DETECTOR)
    _wait_running("api", replicas=1)


def test_ray_runtime_replica_killed_mid_stream_loses_no_item(served: RayServed) -> None:
    victim = _replicas(DETECTOR)[0]
    handle = ray.get_actor(victim["Name"], namespace="serve")
    killed: list[int] = []

    def kill_after_a_few(line: dict[str, Any]) -> None:
        if line["status"] in {"done", "error"} and not killed:
            killed.append(line["index"])
            ray.kill(handle, no_restart=True)

    data = [{"image_base64": _b64("bus.jpg"), "is_yolo": True} for _ in range(40)]
    lines = _stream(served.url, served.key, data, on_line=kill_after_a_few)
    assert killed, "the replica was killed while the stream ran"
    finals = _finals(lines)
    assert sorted(finals) == list(range(40)), "every item ends in exactly one final state"
    assert lines[-1]["status"] == "complete" and sum(x["status"] == "complete" for x in lines) == 1
    # Retries are bounded (runtime.retries) and land on the live replica: no item fails for the kill.
    assert all(x["status"] == "done" for x in finals.values()), [x for x in finals.values() if x["status"] != "done"]
    _wait_running(DETECTOR)  # Serve replaces the replica: later tests see two again


def _wait_running(deployment: str, rounds: int = 600, replicas: int = 2) -> None:
    def running() -> bool:
        status = serve.status().applications[APP].deployments[deployment]
        return status.status == "HEALTHY" and len(_replicas(deployment)) == replicas

    wait_until(running, f"{deployment} back to {replicas} healthy replicas", timeout=rounds * 0.05, poll=0.05)


def test_ray_runtime_overloaded_deployment_answers_503_with_retry_after(served: RayServed, tmp_path: Path) -> None:
    """A deployment that queues at most one request (Serve's max_queued_requests): the rest are refused
    at once with Serve's BackPressureError, which Sight answers as 503 overloaded with Retry-After."""
    from sight.models.registry import EngineRegistry
    from sight.runtimes.ray.replicas import DetectorReplica, detector_serve_deployment

    tight = ReplicaSettings(num_cpus=0.25, max_ongoing_requests=1, max_queued_requests=1)
    settings = _settings(tmp_path, kind="ray", app_name="tight", detector=tight)
    ref = "nudenet:1"
    entry = EngineRegistry(settings).catalog.model(ref, task="detect")
    dep = serve.deployment(name=detector_serve_deployment(entry), **tight.ray_options())(DetectorReplica)
    serve.run(dep.bind(settings, ref), name="tight", route_prefix=None)
    key = _create_key(settings)
    try:
        with LiveServer(create_app(settings)) as live:
            body = {"data": [_b64("bus.jpg")]}

            def call(_: int) -> httpx.Response:
                return httpx.post(f"{live.url}/v1/detect/latest", json=body, timeout=60,
                                  headers={"Authorization": f"Bearer {key}"})

            with ThreadPoolExecutor(12) as pool:
                answers = list(pool.map(call, range(12)))
    finally:
        serve.delete("tight")
    codes = sorted(r.status_code for r in answers)
    assert 503 in codes and 200 in codes, codes
    refused = next(r for r in answers if r.status_code == 503)
    assert refused.headers["Retry-After"] == str(settings.server.retry_after)
    assert refused.json()["detail"]["code"] == "overloaded"


def test_ray_runtime_model_without_deployment_fails_its_items_at_once(served: RayServed, tmp_path: Path) -> None:
    """A detector declared after the application was built has no deployment: its items fail with
    engine_unavailable at once (a call would wait for replicas that never come), their siblings run."""
    settings = _settings(tmp_path, kind="ray", app_name=APP)
    settings.yolo.models["later"] = nudenet_path()
    key = _create_key(settings)
    data = [{"image_base64": _b64("astronaut.png"), "is_yolo": True, "yolo_model": "later"},
            {"image_base64": _b64("astronaut.png"), "is_yolo": True}]
    with TestClient(create_app(settings)) as client:
        r = client.post(STREAM, json={"api_key": key, "data": data})
        models = {m["name"]: m for m in client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
                  .json()["models"]}
        ready = client.get("/readyz").json()["checks"]
    finals = _finals([json.loads(x) for x in r.text.splitlines()])
    assert finals[0]["error"]["code"] == "engine_unavailable", finals[0]
    assert "not deployed" in finals[0]["error"]["message"]
    assert finals[1]["status"] == "done"
    # States come from the cluster: running deployments are ready, the model without one says so.
    assert models["nudenet"]["state"]["state"] == "ready" and models["nudenet"]["loaded"], models["nudenet"]
    assert "replica(s)" in models["nudenet"]["state"]["reason"]
    assert models["rapidocr"]["state"]["state"] == "ready", models["rapidocr"]
    assert models["later"]["state"]["state"] == "unavailable" and not models["later"]["loaded"]
    assert "no Serve deployment 'detect-later-v1'" in models["later"]["state"]["reason"]
    assert ready["states"]["nudenet:1"] == {"state": "ready"} and ready["states"]["later:1"] == {"state": "unavailable"}
    assert set(ready["loaded"]) == {"nudenet:1", "rapidocr:1"}


def test_ray_runtime_serve_config_matches_the_application(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/serve-config.yaml validates as a Serve config, names exactly the application's deployments
    (built by its import_path from its env_vars), and deploy/rayservice.yaml embeds the same application."""
    _import_ray()
    from ray.serve._private.build_app import build_app
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((ROOT / "deploy" / "serve-config.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    (application,) = config["applications"]
    for name, value in application["runtime_env"]["env_vars"].items():
        monkeypatch.setenv(name, value)
    module, _, attr = application["import_path"].partition(":")
    builder = getattr(__import__(module, fromlist=[attr]), attr)
    built = build_app(builder(application["args"]), name=application["name"])
    assert {d.name for d in built.deployments} == {d["name"] for d in application["deployments"]}
    assert built.ingress_deployment_name == "api"

    service = yaml.safe_load((ROOT / "deploy" / "rayservice.yaml").read_text())
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    (kube_app,) = embedded["applications"]
    assert kube_app["deployments"] == application["deployments"]
    assert {k: v for k, v in kube_app.items() if k != "runtime_env"} == \
        {k: v for k, v in application.items() if k != "runtime_env"}


def test_app_and_serve_app_import_no_ray_until_the_ray_runtime_runs() -> None:
    code = ("import sys; from sight.api.app import create_app; import sight.serve_app, sight.runtimes.ray.client; "
            "create_app(); assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


@pytest.mark.anyio
async def test_ray_runtime_retries_a_lost_replica_a_bounded_number_of_times(tmp_path: Path) -> None:
    """A call whose replica dies is sent again at most ``runtime.retries`` times, then the item fails with
    engine_unavailable; back-pressure is never retried (it is the caller's 503)."""
    _import_ray()
    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import BackPressureError

    from sight.errors import EngineUnavailableError, OverloadedError
    from sight.runtimes.ray.client import RayRuntime

    runtime = RayRuntime(_settings(tmp_path, kind="ray", retries=2))
    sent: list[int] = []

    async def dies() -> None:
        sent.append(1)
        raise ActorDiedError()

    with pytest.raises(EngineUnavailableError, match="3 tries"):
        await runtime.send(dies, 10, "detection")
    assert len(sent) == 3

    async def refused() -> None:
        sent.append(1)
        raise BackPressureError(num_queued_requests=1, max_queued_requests=1)

    sent.clear()
    with pytest.raises(OverloadedError) as refusal:
        await runtime.send(refused, 10, "detection")
    assert len(sent) == 1 and refusal.value.retry_after == runtime.settings.server.retry_after


@pytest.mark.anyio
async def test_detector_replica_gathers_concurrent_calls_into_batches(tmp_path: Path) -> None:
    """A detector replica runs the local runtime: with batching on (here forced on the CPU, as a GPU replica
    has it), calls that arrive together share session runs, and each answers in its own original's pixels."""
    _import_ray()
    from sight.engines.base import DetectOptions
    from sight.runtimes.ray.replicas import DetectorReplica

    settings = _settings(tmp_path, kind="ray")
    settings.yolo = settings.yolo.model_copy(update={"batch_max_size": 4, "batch_max_wait_ms": 500,
                                                     "batch_on_cpu": True})
    replica = DetectorReplica(settings, "nudenet")
    data = [(IMAGES / name).read_bytes() for name in ("astronaut.png", "bus.jpg")] * 2
    seen = await asyncio.gather(*(replica.detect(blob, None, DetectOptions()) for blob in data))
    batches = replica.runtime.metrics.batch_size.labels("nudenet:1")
    count = next(s.value for m in batches.collect() for s in m.samples if s.name.endswith("_count"))
    total = next(s.value for m in batches.collect() for s in m.samples if s.name.endswith("_sum"))
    assert total == 4 and count < 4, f"{count} session runs for 4 images"
    assert [s.original for s in seen] == [(512, 512), (810, 1080)] * 2
    assert seen[0].value[0].name == "FACE_FEMALE" and seen[0].value == seen[2].value


def test_registry_entry_sets_its_own_ray_deployment_options(tmp_path: Path) -> None:
    """A registry entry's ``ray`` table sets its deployment's options over SIGHT_RUNTIME__DETECTOR__*; an
    unknown option is refused when the file is read."""
    _import_ray()
    from ray.serve._private.build_app import build_app

    from sight.models.catalog import read_registry_file
    from sight.serve_app import build

    registry = tmp_path / "models.toml"
    registry.write_text(f'[[model]]\nname = "big"\nsource = "{nudenet_path()}"\n'
                        'ray = { num_gpus = 0.5, num_cpus = 0.25, max_replicas = 3 }\n')
    settings = _settings(tmp_path, kind="ray", detector=ReplicaSettings(num_cpus=2, max_replicas=2))
    settings.registry.path = registry
    deployments = {d.name: d for d in build_app(build(settings), name=APP).deployments}
    big, plain = deployments["detect-big-v1"], deployments[DETECTOR]
    assert big.ray_actor_options["num_gpus"] == 0.5 and big.ray_actor_options["num_cpus"] == 0.25
    assert big._deployment_config.autoscaling_config.max_replicas == 3
    assert plain.ray_actor_options["num_cpus"] == 2 and plain._deployment_config.autoscaling_config.max_replicas == 2

    registry.write_text('[[model]]\nname = "big"\nsource = "x.onnx"\nray = { num_gpu = 1 }\n')
    with pytest.raises(InvalidInputError, match="unknown Ray options \\['num_gpu'\\]"):
        read_registry_file(registry)
