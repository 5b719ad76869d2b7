"""Model registry, deployments, multi-model predict, A/B splits and shadows, on real models."""

from __future__ import annotations

import base64
import os
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from sight.api.app import create_app
from sight.config import FetchSettings, RegistrySettings, Settings
from sight.models.registry import EngineRegistry
from tests.conftest import YOLO11N_UNTRAINED, nudenet_path
from tests.helpers import image_bytes, wait_until
from tests.processes import SIGHT, sight_env
from tests.servers import ImageServer, LiveServer

FUNCTIONS = '''
import asyncio

def double(x):
    return 2 * x

async def add_one_async(x, y=0):
    await asyncio.sleep(0)
    if x == 13:
        raise ValueError("unlucky")
    return x + y + 1
'''


def registry_toml(extra: str = "") -> str:
    return textwrap.dedent(f'''
        [[model]]
        name = "faces"
        version = 1
        task = "detect"
        source = "{nudenet_path()}"
        aliases = ["stable"]
        conf = 0.3

        [[model]]
        name = "faces"
        version = 2
        task = "detect"
        source = "{YOLO11N_UNTRAINED}"
        aliases = ["candidate"]
        shadow_of = "faces:1"

        [[split]]
        name = "faces"
        alias = "ab"
        weights = {{ 1 = 50, 2 = 50 }}

        [[model]]
        name = "reader"
        task = "ocr"

        [[deployment]]
        name = "double"
        version = 1
        function = "sightfns:double"

        [[deployment]]
        name = "double"
        version = 2
        function = "sightfns:add_one_async"
        aliases = ["prod"]
    ''') + extra


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    (tmp_path / "sightfns.py").write_text(FUNCTIONS)
    path = tmp_path / "models.toml"
    path.write_text(registry_toml())
    return path


@pytest.fixture
def reg_settings(settings: Settings, registry_file: Path) -> Settings:
    return settings.model_copy(update={"registry": RegistrySettings(path=registry_file),
                                       "fetch": FetchSettings(allow_networks=["127.0.0.0/8"])})


@pytest.fixture
def rclient(reg_settings: Settings, ocr_engine: Any) -> Iterator[TestClient]:
    with TestClient(create_app(reg_settings, engines=EngineRegistry(reg_settings, ocr=ocr_engine))) as c:
        yield c


def _key(client: TestClient, admin: bool = False, team: str = "a") -> dict[str, str]:
    key, _ = client.portal.call(lambda: client.app.state.services.keys.create_key(team, is_admin=admin))  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {key}"}


def _b64(name: str) -> str:
    return base64.b64encode(image_bytes(name)).decode()


def test_models_list_versions_aliases_and_load_state(rclient: TestClient) -> None:
    auth = _key(rclient)
    models = {(m["name"], m["version"]): m for m in rclient.get("/v1/models", headers=auth).json()["models"]}
    # Version 2 only shadows version 1, so the bare name (latest) stays on version 1, and says why.
    assert models[("faces", "1")]["aliases"] == ["stable", "latest"] and models[("faces", "1")]["task"] == "detect"
    assert models[("faces", "2")]["aliases"] == ["candidate"]
    assert models[("faces", "2")]["shadow_of"] == "faces:1"
    detail = rclient.get("/v1/models/faces", headers=auth).json()
    assert detail["serves"] == "1" and detail["serves_why"] == (
        "the highest version that is not a shadow (version 2 is only a shadow)")
    assert models[("reader", "1")]["task"] == "ocr"
    assert not models[("faces", "1")]["loaded"]
    body = {"input": {"image_base64": _b64("astronaut.png")}, "predictions": [{"model_name": "faces:stable"}]}
    assert rclient.post("/v1/predict", json=body, headers=auth).json()["predictions"][0]["status"] == "Success"
    models = {(m["name"], m["version"]): m for m in rclient.get("/v1/models", headers=auth).json()["models"]}
    assert models[("faces", "1")]["loaded"]
    assert rclient.get("/v1/models").status_code == 401


def test_multi_model_predict_runs_each_with_its_own_status(rclient: TestClient) -> None:
    auth = _key(rclient)
    body = {
        "input": {"image_base64": _b64("astronaut.png")},
        "predictions": [
            {"model_name": "faces", "model_version": 1},
            {"model_name": "faces"},
            {"model_name": "reader", "input": {"image_base64": _b64("serial-label.png")}},
            {"model_name": "ghost"},
            {"model_name": "faces", "model_version": 9},
            {"model_name": "faces", "input": {"image_base64": "bm90IGFuIGltYWdl"}},
        ],
    }
    r = rclient.post("/v1/predict", json=body, headers=auth)
    assert r.status_code == 200
    out = r.json()
    preds = out["predictions"]
    assert [p["status"] for p in preds] == ["Success", "Success", "Success", "BadRequest", "BadRequest", "BadRequest"]
    # The bare name serves version 1: version 2 only shadows it, and a shadow never takes live traffic.
    assert [p["model_version"] for p in preds[:3]] == ["1", "1", "1"]
    assert preds[0]["prediction"][0]["name"] == "FACE_FEMALE" and preds[0]["error_message"] is None
    assert preds[1]["prediction"] == preds[0]["prediction"]
    assert "SN-4X7Q-2291-B" in preds[2]["prediction"]["text"]
    assert "ghost" in preds[3]["error_message"] and preds[3]["prediction"] is None
    assert all(type(p["duration_ms"]) is int and p["duration_ms"] >= 0 for p in preds)  # integers, as API.md says
    assert type(out["duration_ms"]) is int and out["duration_ms"] >= 0
    no_input = rclient.post("/v1/predict", json={"predictions": [{"model_name": "faces"}]}, headers=auth).json()
    assert no_input["predictions"][0]["status"] == "BadRequest"
    # Neither or both image fields: that prediction's input error, its siblings run.
    mixed = rclient.post("/v1/predict", headers=auth, json={"predictions": [
        {"model_name": "faces", "input": {"image_base64": _b64("astronaut.png"), "image_url": "https://x/a.png"}},
        {"model_name": "faces", "input": {}},
        {"model_name": "faces", "input": {"image_base64": _b64("astronaut.png")}}]}).json()["predictions"]
    assert [p["status"] for p in mixed] == ["BadRequest", "BadRequest", "Success"]
    assert all("exactly one of image_url and image_base64" in p["error_message"] for p in mixed[:2])


def test_single_model_predict_status_codes(rclient: TestClient, image_server: ImageServer) -> None:
    auth = _key(rclient)
    ok = rclient.get("/v1/models/faces/predict", params={"image_url": f"{image_server.url}/astronaut.png",
                                                          "version": "1"}, headers=auth)
    assert ok.status_code == 200 and ok.json()["prediction"][0]["name"] == "FACE_FEMALE"
    missing = rclient.get("/v1/models/ghost/predict", params={"image_url": f"{image_server.url}/a.png"},
                          headers=auth)
    assert missing.status_code == 400 and missing.json()["status"] == "BadRequest"
    detail = rclient.get("/v1/models/faces", headers=auth).json()
    assert [v["version"] for v in detail["versions"]] == ["1", "2"]
    assert rclient.get("/v1/models/ghost", headers=auth).status_code == 404


def test_ab_split_is_weighted_and_pinned_per_request_id(rclient: TestClient) -> None:
    auth = _key(rclient)
    body = {"input": {"image_base64": _b64("coffee.png")}, "predictions": [{"model_name": "faces:ab"}]}

    def version(request_id: str) -> str:
        r = rclient.post("/v1/predict", json=body, headers={**auth, "X-Request-ID": request_id})
        return r.json()["predictions"][0]["model_version"]  # type: ignore[no-any-return]

    assert len({version("retry-me") for _ in range(4)}) == 1, "a retry hits the same version"
    seen = [version(f"req-{i}") for i in range(24)]
    assert set(seen) == {"1", "2"}
    assert 4 <= seen.count("1") <= 20
    assert rclient.get("/v1/models/faces", headers=auth).json()["splits"] == {"ab": {"1": 0.5, "2": 0.5}}


def test_shadow_agreement_is_recorded_not_returned(rclient: TestClient) -> None:
    auth = _key(rclient)
    body = {"input": {"image_base64": _b64("astronaut.png")}, "predictions": [{"model_name": "faces:1"}]}
    shadows: list[dict[str, Any]] = []
    for _ in range(20):  # shadows are best effort (skipped while their slots are busy): send until 3 ran
        preds = rclient.post("/v1/predict", json=body, headers=auth).json()["predictions"]
        assert len(preds) == 1 and preds[0]["model_version"] == "1"
        rclient.portal.call(rclient.app.state.services.shadows.drain)  # type: ignore[attr-defined]
        shadows = rclient.get("/v1/models/faces", headers=auth).json()["shadows"]
        if shadows and shadows[0]["runs"] >= 3:
            break
    (agreement,) = shadows
    assert agreement["primary"] == "faces:1" and agreement["shadow"] == "faces:2"
    assert agreement["errors"] == 0 and agreement["runs"] >= 3 and agreement["compared"] == agreement["runs"]
    # The untrained v2 returns no boxes: recall 0 of the primary's faces, and no precision at all (0 / 0).
    assert agreement["shadow_boxes"] == agreement["matched_boxes"] == 0
    assert agreement["primary_boxes"] >= agreement["runs"]
    assert agreement["precision"] is None and agreement["recall"] == 0.0
    assert agreement["exact_matches"] == 0 and agreement["exact_match"] == 0.0
    metrics = rclient.get("/metrics").text
    assert 'sight_shadow_agreement{metric="recall",primary="faces:1",shadow="faces:2"} 0.0' in metrics
    assert 'metric="precision",primary="faces:1"' not in metrics


def test_llm_shadow_is_compared_by_exact_answer(
    settings: Settings, registry_file: Path, llm: Any, engines: EngineRegistry
) -> None:
    registry_file.write_text(registry_toml(f'''
[[model]]
name = "vlm"
version = 1
task = "llm"
source = "{llm.url}"
model = "fake-vl"

[[model]]
name = "vlm"
version = 2
task = "llm"
source = "{llm.url}"
model = "fake-vl-next"
shadow_of = "vlm:1"
'''))
    cfg = settings.model_copy(update={"registry": RegistrySettings(path=registry_file)})
    with TestClient(create_app(cfg, engines=EngineRegistry(cfg))) as client:
        auth = _key(client)
        body = {"input": {"image_base64": _b64("coffee.png"), "query": "what?"},
                "predictions": [{"model_name": "vlm", "model_version": 1}]}
        (pred,) = client.post("/v1/predict", json=body, headers=auth).json()["predictions"]
        assert pred["status"] == "Success" and pred["prediction"]["answer"] == "I see an image."
        client.portal.call(client.app.state.services.shadows.drain)  # type: ignore[attr-defined]
        (agreement,) = client.get("/v1/models/vlm", headers=auth).json()["shadows"]
    assert {r["body"]["model"] for r in llm.requests} == {"fake-vl", "fake-vl-next"}
    assert agreement["runs"] == 1 and agreement["exact_match"] == 1.0 and agreement["exact_matches"] == 1
    assert agreement["precision"] is None and agreement["shadow_boxes"] is None


def test_deployments_builtins_single_and_batch(rclient: TestClient, llm: Any) -> None:
    auth = _key(rclient)
    single = rclient.post("/v1/detect/latest", json={"data": [_b64("astronaut.png"), {"model": "faces:1"}]},
                          headers=auth)
    assert single.status_code == 200 and single.json()["data"][0]["name"] == "FACE_FEMALE"
    rows = [["b", _b64("coffee.png"), {"model": "faces:1"}], [10, _b64("astronaut.png"), {"model": "faces:1"}],
            [2, "bm90IGFuIGltYWdl"], ["a", _b64("astronaut.png"), {"model": "faces:1", "conf": 0.99}]]
    out = rclient.post("/v1/detect/1", json={"data": rows}, headers=auth).json()
    assert [row[0] for row in out["data"]] == [2, 10, "a", "b"], "sorted by id, numbers first"
    by_id = dict(map(tuple, out["data"]))  # type: ignore[arg-type]
    assert by_id[10][0]["name"] == "FACE_FEMALE" and by_id["a"] == [] and by_id["b"] == []
    assert by_id[2] is None
    assert out["errors"] == [[2, {"code": "invalid_image", "message": out["errors"][0][1]["message"]}]]
    ocr = rclient.post("/v1/ocr/latest", headers=auth, json={"data": _b64("serial-label.png")}).json()
    assert "SN-4X7Q-2291-B" in ocr["data"]["text"]
    analyzed = rclient.post("/v1/analyze/latest", headers=auth,
                            json={"data": [_b64("coffee.png"), "what is this?"]}).json()
    assert analyzed["data"]["answer"] == "I see an image."
    predicted = rclient.post("/v1/predict/latest", headers=auth,
                             json={"data": [_b64("astronaut.png"), {"is_yolo": True, "yolo_model": "faces:1"}]})
    assert predicted.json()["data"]["yolo"]["detections"][0]["name"] == "FACE_FEMALE"


def test_user_function_deployments_with_versions_and_aliases(rclient: TestClient) -> None:
    auth = _key(rclient)
    assert rclient.post("/v1/double/1", json={"data": 21}, headers=auth).json() == {"data": 42}
    assert rclient.post("/v1/double/latest", json={"data": [1, 2]}, headers=auth).json() == {"data": 4}
    assert rclient.post("/v1/double/prod", json={"data": 5}, headers=auth).json() == {"data": 6}
    batch = rclient.post("/v1/double/2", json={"data": [["x", 1], [3, 13], [1, 5, 10]]}, headers=auth).json()
    assert batch["data"] == [[1, 16], [3, None], ["x", 2]]
    assert batch["errors"] == [[3, {"code": "internal", "message": "ValueError: unlucky"}]]
    forced_single = rclient.post("/v1/double/1", json={"data": [[1, 2]], "batch": False}, headers=auth).json()
    assert forced_single == {"data": [1, 2, 1, 2]}


def test_deployment_errors_use_the_one_error_shape_and_the_modelbit_field(rclient: TestClient) -> None:
    auth = _key(rclient)
    cases = [
        (rclient.post("/v1/nothing/latest", json={"data": 1}, headers=auth), 404),
        (rclient.post("/v1/double/7", json={"data": 1}, headers=auth), 404),
        (rclient.post("/v1/double/beta", json={"data": 1}, headers=auth), 404),
        (rclient.post("/v1/detect/2", json={"data": "x"}, headers=auth), 404),
        (rclient.post("/v1/double/1", json={"data": [[1, 2], [1, 3]]}, headers=auth), 400),
        (rclient.post("/v1/double/1", content=b"{nope", headers=auth), 400),
        (rclient.post("/v1/double/1", json={"nodata": 1}, headers=auth), 400),
        (rclient.post("/v1/double/1", json={"data": 1}), 401),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"detail", "error"} and body["error"] == body["detail"]["message"]
        assert set(body["detail"]) == {"code", "message"} and body["detail"]["code"] in (
            "not_found", "model_not_found", "invalid_input", "unauthorized")
    bare = rclient.post("/v1/double/1", json={"data": 2}, headers={"Authorization": auth["Authorization"][7:]})
    assert bare.json() == {"data": 4}, "family 2 clients send the bare key"


def test_reload_needs_admin_and_picks_up_edits(rclient: TestClient, registry_file: Path) -> None:
    user, admin = _key(rclient), _key(rclient, admin=True)
    assert rclient.post("/v1/models:reload", headers=user).status_code == 403  # a valid key, not an admin one
    registry_file.write_text(registry_toml(f'''
[[model]]
name = "faces"
version = 3
task = "detect"
source = "{nudenet_path()}"
aliases = ["latest"]
'''))
    r = rclient.post("/v1/models:reload", headers=admin)
    assert r.status_code == 200
    assert ("faces", "3") in {(m["name"], m["version"]) for m in r.json()["models"]}
    body = {"input": {"image_base64": _b64("astronaut.png")}, "predictions": [{"model_name": "faces"}]}
    assert rclient.post("/v1/predict", json=body, headers=user).json()["predictions"][0]["model_version"] == "3"
    registry_file.write_text("this is [not toml")
    bad = rclient.post("/v1/models:reload", headers=admin)
    assert bad.status_code == 400
    assert rclient.post("/v1/predict", json=body, headers=user).json()["predictions"][0]["model_version"] == "3"


def test_reload_imports_edited_user_functions_again(reg_settings: Settings, registry_file: Path, ocr_engine: Any
                                                   ) -> None:
    """"Edit and reload" runs the edited code: a reload imports every user function's module afresh."""
    folder = registry_file.parent
    (folder / "edited_fns.py").write_text("def scale(x):\n    return 2 * x\n")
    (folder / "other_fns.py").write_text("def label(x):\n    return f'v1 {x}'\n")
    registry_file.write_text(registry_toml(
        '[[deployment]]\nname = "scale"\nfunction = "edited_fns:scale"\n\n'
        '[[deployment]]\nname = "label"\nfunction = "other_fns:label"\n'))
    with TestClient(create_app(reg_settings, engines=EngineRegistry(reg_settings, ocr=ocr_engine))) as c:
        admin = _key(c, admin=True)
        assert c.post("/v1/scale/latest", json={"data": 7}, headers=admin).json() == {"data": 14}
        assert c.post("/v1/label/latest", json={"data": 1}, headers=admin).json() == {"data": "v1 1"}
        (folder / "edited_fns.py").write_text("def scale(x):\n    return 3 * x  # fixed\n")
        (folder / "other_fns.py").write_text("def label(x):\n    return f'second {x}'\n")
        assert c.post("/v1/scale/latest", json={"data": 7}, headers=admin).json() == {"data": 14}, "until reload"
        assert c.post("/v1/models:reload", headers=admin).status_code == 200
        assert c.post("/v1/scale/latest", json={"data": 7}, headers=admin).json() == {"data": 21}
        assert c.post("/v1/label/latest", json={"data": 1}, headers=admin).json() == {"data": "second 1"}


def test_reload_under_load_fails_nothing(reg_settings: Settings, registry_file: Path) -> None:
    with LiveServer(create_app(reg_settings)) as live:
        key, _ = live.call(lambda: live.app.state.services.keys.create_key("a", is_admin=True))
        auth = {"Authorization": f"Bearer {key}"}
        body = {"input": {"image_base64": _b64("astronaut.png")}, "predictions": [{"model_name": "faces"}]}
        failures: list[str] = []
        served: list[str] = []  # the version that answered each request, in order
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=live.url, headers=auth, timeout=60) as http:
                for _ in range(2000):
                    if stop.is_set():
                        return
                    pred = http.post("/v1/predict", json=body).json()["predictions"][0]
                    if pred["status"] != "Success":
                        failures.append(str(pred))
                    served.append(pred["model_version"])

        def answered_by(version: str, since: int) -> bool:
            return served[since:].count(version) >= 3

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        with httpx.Client(base_url=live.url, headers=auth, timeout=60) as http:
            for i in range(6):
                # Odd rounds pin "latest" to version 1, even rounds to version 2 (a shadow serves live traffic
                # only when an alias names it).
                toml = registry_toml()
                toml = (toml.replace('aliases = ["stable"]', 'aliases = ["stable", "latest"]') if i % 2
                        else toml.replace('aliases = ["candidate"]', 'aliases = ["candidate", "latest"]'))
                registry_file.write_text(toml)
                before = len(served)
                assert http.post("/v1/models:reload").status_code == 200
                # The next round reloads under load again only once requests are answered by this round's pin.
                pinned = "1" if i % 2 else "2"
                wait_until(partial(answered_by, pinned, before), f"requests answered by version {pinned}")
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert failures == []
        assert set(served) == {"1", "2"}, "requests moved between versions as the file changed"


@pytest.mark.slow
def test_models_cli_list_and_pull_without_the_extra(tmp_path: Path, registry_file: Path) -> None:
    env = sight_env(tmp_path, SIGHT_REGISTRY__PATH=str(registry_file))
    # The test extra brings ultralytics (the parity test's reference): hide it, as an install without the extra.
    hidden = tmp_path / "without-ultralytics" / "ultralytics"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('no module named ultralytics (hidden by the test)')\n")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hidden.parent), env.get("PYTHONPATH")) if p)

    def sight(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*SIGHT, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    listing = sight("models", "list")
    assert listing.returncode == 0 and "faces" in listing.stdout and "candidate" in listing.stdout
    offline = sight("models", "pull", "yolo11n")  # the tests' environment turns downloads off
    assert offline.returncode == 1
    assert "SIGHT_MODELS__OFFLINE" in offline.stdout and "SIGHT_YOLO__MODELS" in offline.stdout
    export = sight("models", "pull", "yolo11n", "--imgsz", "1280")  # an export needs .pt weights and PyTorch
    assert export.returncode == 1
    assert "sight[ultralytics]" in export.stdout and "SIGHT_YOLO__MODELS" in export.stdout
    bad = sight("models", "pull", "resnet50")
    assert bad.returncode == 2 and "official Ultralytics" in bad.stdout


def test_eager_loading_loads_local_models_at_start(reg_settings: Settings, engines: EngineRegistry) -> None:
    cfg = reg_settings.model_copy(update={"registry": reg_settings.registry.model_copy(update={"eager": True})})
    with TestClient(create_app(cfg)) as client:
        loaded = client.get("/readyz").json()["checks"]["loaded"]
    assert {"faces:1", "faces:2", "reader:1"} <= set(loaded)


def test_ocr_has_one_name_everywhere(rclient: TestClient) -> None:
    """The registry file names OCR `reader`: multi-model predict takes that name, batch requests report it,
    and the built-in default name is gone."""
    auth = _key(rclient)
    image = {"image_base64": _b64("serial-label.png")}
    preds = rclient.post("/v1/predict", headers=auth, json={"input": image, "predictions": [
        {"model_name": "reader"}, {"model_name": "rapidocr"}]}).json()["predictions"]
    assert [p["status"] for p in preds] == ["Success", "BadRequest"]
    batch = rclient.post("/v1/batches", json={"name": "ocr"}, headers=auth).json()["batch_id"]
    rclient.post(f"/v1/batches/{batch}/requests", headers=auth, json={"batch_requests": [
        {"batch_request": {"vision_predict": {**image, "is_ocr": True}}}]})
    (listed,) = rclient.get(f"/v1/batches/{batch}/requests", headers=auth).json()["batch_request_metadata"]
    assert listed["model"] == "reader"
    assert "rapidocr" not in {m["name"] for m in rclient.get("/v1/models", headers=auth).json()["models"]}
