"""The Ray runtime on a real two-node Ray cluster (loopback): same results as the local runtime, replicas on
both nodes, a replica killed mid-stream loses no item, an overloaded Serve deployment answers 503. (A worker
node removed mid-stream: tests/test_ray_failover.py, on a cluster of its own.)

One cluster and one Serve application for the module, public Ray APIs only; every wait is on an event (a
response, Serve's status), bounded.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from sight.api.app import create_app
from sight.config import ReplicaSettings, Settings
from sight.errors import InvalidInputError
from tests.conftest import IMAGES, ROOT, nudenet_path
from tests.ray_cluster import (
    APP,
    CLUSTER_MARKS,
    DETECTOR,
    STREAM,
    RayServed,
    b64,
    create_key,
    finals,
    import_ray,
    places,
    running_replicas,
    settings_for,
    sight_on_ray,
    stream,
    wait_running,
)
from tests.servers import FakeLLMServer, LiveServer

pytestmark = CLUSTER_MARKS


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, llm_server: FakeLLMServer) -> Iterator[RayServed]:
    """Sight on two nodes, with one more detector whose file is not a model: its replica starts, and reports why
    it cannot serve."""
    tmp = tmp_path_factory.mktemp("ray")

    def broken_detector(settings: Settings) -> None:
        (tmp / "broken.onnx").write_bytes(b"not an onnx model")
        (tmp / "models.toml").write_text(f'[[model]]\nname = "broken"\nsource = "{tmp / "broken.onnx"}"\n'
                                         'ray = { num_cpus = 0.25, min_replicas = 1, max_replicas = 1 }\n')
        settings.registry.path = tmp / "models.toml"

    with sight_on_ray(tmp, llm_server.url, broken_detector) as ray_served:
        yield ray_served



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
    data = [{"image_base64": b64(name), "filename": name, "is_yolo": True}
            for name in ("astronaut.png", "bus.jpg", "rocket.jpg", "coffee.png")]
    data.append({"image_base64": b64("serial-label.png"), "filename": "label.png", "is_ocr": True})
    data.append({"image_base64": _rotated_png(), "filename": "turned.png", "is_yolo": True, "is_ocr": True})
    # bus.jpg with other stages asked too: detection's result does not depend on them, here as in process.
    data.append({"image_base64": b64("bus.jpg"), "filename": "bus.jpg", "is_yolo": True, "is_ocr": True})
    data.append({"image_base64": b64("bus.jpg"), "filename": "bus.jpg", "is_yolo": True, "is_llm": True})
    remote = finals(stream(served.url, served.key, data))

    local_settings = settings_for(tmp_path)
    local_settings.llm = served.settings.llm  # the same loopback LLM
    local_key = create_key(local_settings)
    with TestClient(create_app(local_settings)) as client:
        r = client.post(STREAM, json={"api_key": local_key, "data": data})
    local = finals([json.loads(x) for x in r.text.splitlines()])

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
    settings = settings_for(tmp_path, kind="ray", app_name=APP)
    key = create_key(settings)
    jpeg = (IMAGES / "bus.jpg").read_bytes()
    data = [{"image_base64": _rotated_png(), "is_yolo": True},
            {"image_base64": base64.b64encode(jpeg[: len(jpeg) // 3]).decode(), "is_yolo": True},
            {"image_base64": b64("serial-label.png"), "is_ocr": True},
            {"image_base64": b64("bus.jpg"), "is_yolo": True, "is_ocr": True}]
    with TestClient(create_app(settings)) as client:
        r = client.post(STREAM, json={"api_key": key, "data": data})
    ended = finals([json.loads(x) for x in r.text.splitlines()])
    assert decoded == [], "the API decoded pixels no stage of its own needed"
    assert ended[0]["status"] == "done" and ended[0]["result"]["yolo"]["detections"], ended[0]
    assert ended[0]["result"]["image"] == {"width": 384, "height": 512}
    assert ended[1]["status"] == "error" and ended[1]["error"]["code"] == "invalid_image", ended[1]
    assert "SN-4X7Q-2291-B" in ended[2]["result"]["ocr"]["text"]
    assert ended[3]["status"] == "done" and ended[3]["result"]["yolo"]["detections"], ended[3]
    assert ended[3]["result"]["ocr"]["text"], ended[3]


def test_ray_runtime_reports_a_model_its_replica_cannot_load(served: RayServed) -> None:
    """The broken detector's replica runs (the application is up), /v1/models says failed with the load
    error its replica met, and its items fail with that reason while the others' run."""
    with TestClient(create_app(served.settings)) as client:
        auth = {"Authorization": f"Bearer {served.key}"}
        models = {m["name"]: m for m in client.get("/v1/models", headers=auth).json()["models"]}
        data = [{"image_base64": b64("bus.jpg"), "is_yolo": True, "yolo_model": "broken"},
                {"image_base64": b64("bus.jpg"), "is_yolo": True}]
        r = client.post(STREAM, json={"api_key": served.key, "data": data})
    assert models["broken"]["state"]["state"] == "failed" and not models["broken"]["loaded"], models["broken"]
    assert "failed to load" in models["broken"]["state"]["reason"]
    assert models["nudenet"]["state"]["state"] == "ready"
    ended = finals([json.loads(x) for x in r.text.splitlines()])
    assert ended[0]["error"]["code"] == "engine_unavailable" and "failed to load" in ended[0]["error"]["message"]
    assert ended[1]["status"] == "done"


def test_ray_runtime_llm_calls_go_through_the_llm_deployment(served: RayServed, llm: FakeLLMServer) -> None:
    """Through the Serve proxy: an OCR + LLM item and a YOLO + LLM item with a query. The LLM deployment asks
    the loopback backend with the grounding, and condenses the two answers into the batch answer."""
    query = "find me the serial number from the images"
    data = [{"image_base64": b64("serial-label.png"), "filename": "label.png", "is_ocr": True, "is_llm": True},
            {"image_base64": b64("astronaut.png"), "filename": "astro.png", "is_yolo": True, "is_llm": True}]
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
    assert running_replicas("llm") == 1, "the LLM Serve deployment runs"


def test_ray_runtime_answers_a_response_schema_as_in_process(served: RayServed, llm: FakeLLMServer) -> None:
    """The schema crosses to the LLM replica and back (response_format, the checked reply); an answer that
    does not fit crosses back as llm_invalid_output with its raw text, the OCR's pattern match kept."""
    schema = {"type": "object", "properties": {"serial_number": {"type": "string"}, "year": {
        "type": "string", "pattern": "20[0-9]{2}"}}}
    llm.mode = "schema_required"
    llm.answer = lambda _body: json.dumps({"fields": {"serial_number": "SN-4X7Q-229I-B"}})  # I for 1
    data = [{"image_base64": b64("serial-label.png"), "filename": "label.png", "is_llm": True}]
    body = {"api_key": served.key, "data": data, "response_schema": schema}
    r = httpx.post(served.url + "/api/v1/inference/predict/batch/v2", json=body, timeout=120)
    assert r.status_code == 200, r.text
    (item,) = r.json()["result"]["items"]
    assert item["status"] == "done" and item["llm"]["structured"] == "schema", item
    assert item["fields"] == {"serial_number": "SN-4X7Q-229I-B", "year": "2024"}
    assert item["verified"] == {"serial_number": False, "year": None}
    assert item["evidence"]["serial_number"][0]["match"] == "near"
    llm.answer = lambda _body: "no JSON here"
    (item,) = httpx.post(served.url + "/api/v1/inference/predict/batch/v2", json=body, timeout=120
                         ).json()["result"]["items"]
    assert item["error"]["code"] == "llm_invalid_output" and item["llm"]["answer"] == "no JSON here", item
    assert item["fields"] == {"serial_number": None, "year": "2024"}


def test_ray_runtime_detector_replicas_on_both_nodes_serve_a_stream(served: RayServed) -> None:
    ray, _serve, _cluster = import_ray()
    data = [{"image_base64": b64("astronaut.png" if i % 2 else "rocket.jpg"), "is_yolo": True} for i in range(40)]
    lines = stream(served.url, served.key, data)
    ended = finals(lines)
    assert sorted(ended) == list(range(40))
    assert all(x["status"] == "done" for x in ended.values())
    assert lines[-1]["status"] == "complete"
    # Calls sent at once reach both replicas, which run on both nodes: their answers say where they ran.
    seen = places(served.settings)
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len({p.replica for p in seen}) == 2, "both replicas answered"
    assert {p.node for p in seen} == alive and len(alive) == 2, "Serve spreads the replicas over the nodes"


def test_ray_runtime_replica_killed_mid_stream_loses_no_item(served: RayServed) -> None:
    victim = places(served.settings)[0]  # one of the detector's replica processes (on this machine)
    killed: list[int] = []

    def kill_after_a_few(line: dict[str, Any]) -> None:
        if line["status"] in {"done", "error"} and not killed:
            killed.append(line["index"])
            os.kill(victim.pid, signal.SIGKILL)

    data = [{"image_base64": b64("bus.jpg"), "is_yolo": True} for _ in range(40)]
    lines = stream(served.url, served.key, data, on_line=kill_after_a_few)
    assert killed, "the replica was killed while the stream ran"
    ended = finals(lines)
    assert sorted(ended) == list(range(40)), "every item ends in exactly one final state"
    assert lines[-1]["status"] == "complete" and sum(x["status"] == "complete" for x in lines) == 1
    # Retries are bounded (runtime.retries) and land on the live replica: no item fails for the kill.
    assert all(x["status"] == "done" for x in ended.values()), [x for x in ended.values() if x["status"] != "done"]
    wait_running(DETECTOR)  # Serve replaces the replica
    assert victim.replica not in {p.replica for p in places(served.settings)}, "a new replica took its place"


def test_ray_runtime_overloaded_deployment_answers_503_with_retry_after(served: RayServed, tmp_path: Path) -> None:
    """A deployment that queues at most one request (Serve's max_queued_requests): the rest are refused
    at once with Serve's BackPressureError, which Sight answers as 503 overloaded with Retry-After."""
    _ray, serve, _cluster = import_ray()
    from sight.models.registry import EngineRegistry
    from sight.runtimes.ray.replicas import DetectorReplica, detector_serve_deployment

    tight = ReplicaSettings(num_cpus=0.25, max_ongoing_requests=1, max_queued_requests=1)
    settings = settings_for(tmp_path, kind="ray", app_name="tight", detector=tight)
    ref = "nudenet:1"
    entry = EngineRegistry(settings).catalog.model(ref, task="detect")
    dep = serve.deployment(name=detector_serve_deployment(entry), **tight.ray_options())(DetectorReplica)
    serve.run(dep.bind(settings, ref), name="tight", route_prefix=None)
    key = create_key(settings)
    try:
        with LiveServer(create_app(settings)) as live:
            body = {"data": [b64("bus.jpg")]}

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
    settings = settings_for(tmp_path, kind="ray", app_name=APP)
    settings.yolo.models["later"] = nudenet_path()
    key = create_key(settings)
    data = [{"image_base64": b64("astronaut.png"), "is_yolo": True, "yolo_model": "later"},
            {"image_base64": b64("astronaut.png"), "is_yolo": True}]
    with TestClient(create_app(settings)) as client:
        r = client.post(STREAM, json={"api_key": key, "data": data})
        models = {m["name"]: m for m in client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
                  .json()["models"]}
        ready = client.get("/readyz").json()["checks"]
    ended = finals([json.loads(x) for x in r.text.splitlines()])
    assert ended[0]["error"]["code"] == "engine_unavailable", ended[0]
    assert "not deployed" in ended[0]["error"]["message"]
    assert ended[1]["status"] == "done"
    # States come from the cluster: running deployments are ready, the model without one says so.
    assert models["nudenet"]["state"]["state"] == "ready" and models["nudenet"]["loaded"], models["nudenet"]
    assert "replica(s)" in models["nudenet"]["state"]["reason"]
    assert models["rapidocr"]["state"]["state"] == "ready", models["rapidocr"]
    assert models["later"]["state"]["state"] == "unavailable" and not models["later"]["loaded"]
    assert "no Serve deployment 'detect-later-v1'" in models["later"]["state"]["reason"]
    assert ready["states"]["nudenet:1"] == {"state": "ready"} and ready["states"]["later:1"] == {"state": "unavailable"}
    assert set(ready["loaded"]) == {"nudenet:1", "rapidocr:1"}


def test_ray_runtime_serve_config_matches_the_application(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/serve-config.yaml validates as a Serve config, its import_path builds a Serve application from
    its env_vars, it names exactly the application's Serve deployments, and deploy/rayservice.yaml embeds the
    same application."""
    _ray, serve, _cluster = import_ray()
    from ray.serve.schema import ServeDeploySchema

    from sight.runtimes.ray.replicas import API_SERVE_DEPLOYMENT
    from sight.serve_app import serve_deployments

    config = yaml.safe_load((ROOT / "deploy" / "serve-config.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    (application,) = config["applications"]
    for name, value in application["runtime_env"]["env_vars"].items():
        monkeypatch.setenv(name, value)
    module, _, attr = application["import_path"].partition(":")
    builder = getattr(__import__(module, fromlist=[attr]), attr)
    assert isinstance(builder(application["args"]), serve.Application)
    names = {*serve_deployments(Settings()), API_SERVE_DEPLOYMENT}
    assert names == {d["name"] for d in application["deployments"]}

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
    import_ray()
    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import BackPressureError

    from sight.errors import EngineUnavailableError, OverloadedError
    from sight.runtimes.ray.client import RayRuntime

    runtime = RayRuntime(settings_for(tmp_path, kind="ray", retries=2))
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
    import_ray()
    from sight.engines.base import DetectOptions
    from sight.runtimes.ray.replicas import DetectorReplica

    settings = settings_for(tmp_path, kind="ray")
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
    """A registry entry's ``ray`` table sets its Serve deployment's options over SIGHT_RUNTIME__DETECTOR__*
    (as ``build`` hands them to ``serve.deployment``); an unknown option is refused when the file is read."""
    from sight.models.catalog import read_registry_file
    from sight.serve_app import serve_deployments

    registry = tmp_path / "models.toml"
    registry.write_text(f'[[model]]\nname = "big"\nsource = "{nudenet_path()}"\n'
                        'ray = { num_gpus = 0.5, num_cpus = 0.25, max_replicas = 3 }\n')
    settings = settings_for(tmp_path, kind="ray", detector=ReplicaSettings(num_cpus=2, max_replicas=2))
    settings.registry.path = registry
    planned = serve_deployments(settings)
    big, plain = planned["detect-big-v1"][0].ray_options(), planned[DETECTOR][0].ray_options()
    assert big["ray_actor_options"] == {"num_cpus": 0.25, "num_gpus": 0.5}
    assert big["autoscaling_config"]["max_replicas"] == 3  # type: ignore[index]
    assert plain["ray_actor_options"]["num_cpus"] == 2 and plain["autoscaling_config"]["max_replicas"] == 2  # type: ignore[index]

    registry.write_text('[[model]]\nname = "big"\nsource = "x.onnx"\nray = { num_gpu = 1 }\n')
    with pytest.raises(InvalidInputError, match="unknown Ray options \\['num_gpu'\\]"):
        read_registry_file(registry)
