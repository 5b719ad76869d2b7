"""Model files that provision themselves: the default detector, pinned URLs and Hugging Face files, served by a
real HTTP server on loopback. Verified, atomic, single flight, and every failure a clear error with no file left."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sight.api.app import create_app
from sight.config import LLMSettings, ModelsSettings, Settings, YoloSettings
from sight.errors import InvalidInputError, ModelNotFoundError, ModelUnavailableError, StageTimeoutError
from sight.models import official
from sight.models.catalog import Catalog
from sight.models.files import ModelFiles
from sight.models.official import OFFICIAL, OfficialModel
from sight.models.registry import EngineRegistry
from sight.models.sources import ModelSource
from tests.conftest import YOLO11N_UNTRAINED
from tests.helpers import image_bytes
from tests.model_servers import ModelFileServer, sha256_of

UNTRAINED = YOLO11N_UNTRAINED.read_bytes()
V2 = "/api/v1/inference/predict/batch/v2"


@pytest.fixture
def files_server() -> Iterator[ModelFileServer]:
    with ModelFileServer({"/yolo11n.onnx": UNTRAINED, "/other.onnx": UNTRAINED}) as server:
        yield server


def _settings(tmp_path: Path, **models: object) -> Settings:
    return Settings(
        _env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path / 'sight.db'}", data_dir=tmp_path / "data",
        yolo=YoloSettings(), llm=LLMSettings(discover=False), models=ModelsSettings(**models),  # type: ignore[arg-type]
    )


def _leftovers(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def official_on_loopback(files_server: ModelFileServer, monkeypatch: pytest.MonkeyPatch) -> OfficialModel:
    """The official yolo11n entry pointed at the loopback server, with that file's real size and hash: the
    production code path (catalog default, size pin, licence, target name) with bytes we can serve here."""
    entry = OfficialModel("yolo11n", f"{files_server.url}/yolo11n.onnx", len(UNTRAINED), sha256_of(YOLO11N_UNTRAINED))
    monkeypatch.setitem(OFFICIAL, "yolo11n", entry)
    return entry


def test_official_table_pins_the_release_files() -> None:
    release = "https://github.com/ultralytics/assets/releases/download/v8.4.0"
    assert {(m.name, m.url, m.size, m.sha256, m.license) for m in OFFICIAL.values()} == {
        ("yolo11n", f"{release}/yolo11n.onnx", 10_930_182,
         "634279b40c07c6391472c51ad45b81ebc48706a9a1fe72dd3396322acd0c053b", "AGPL-3.0"),
        ("yolo11s", f"{release}/yolo11s.onnx", 38_051_729,
         "21d6650c5097610c92c76ce5e4b717976059169eaea4962035b90c6a92c07a8f", "AGPL-3.0"),
        ("yolo11m", f"{release}/yolo11m.onnx", 80_673_621,
         "8a37b5c53ff642831aa454156b548ec2cf2537827445385c3e1c1b276cb666a3", "AGPL-3.0"),
    }


def test_catalog_declares_the_official_default_detector_when_none_is_configured(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    entry = Catalog.from_settings(settings).model("yolo11n", task="detect")
    assert entry.source == OFFICIAL["yolo11n"].source
    source = ModelSource.parse(entry.source)
    assert (source.size, source.license) == (10_930_182, "AGPL-3.0")
    assert ModelFiles(settings.models, settings.models_dir).target(source) == settings.models_dir / "yolo11n.onnx"
    # A detector configured under the default name wins, and a non-official default declares nothing.
    settings.yolo.models = {"yolo11n": str(YOLO11N_UNTRAINED)}
    assert Catalog.from_settings(settings).model("yolo11n").source == str(YOLO11N_UNTRAINED)
    settings.yolo.models, settings.yolo.default_model = {}, "mine"
    with pytest.raises(ModelNotFoundError):
        Catalog.from_settings(settings).model("mine")


def test_model_source_parses_paths_urls_and_hugging_face_files() -> None:
    assert ModelSource.parse("/m/a.onnx") == ModelSource("path", "/m/a.onnx")
    url = ModelSource.parse("http://127.0.0.1:9/a.onnx#sha256=" + "AB" * 32)
    assert (url.kind, url.location, url.sha256, url.size) == ("http", "http://127.0.0.1:9/a.onnx", "ab" * 32, None)
    hf = ModelSource.parse("hf://acme/detectors@v2/onnx/best.onnx")
    assert (hf.kind, hf.repo, hf.revision, hf.location) == ("hf", "acme/detectors", "v2", "onnx/best.onnx")
    assert str(hf) == "hf://acme/detectors@v2/onnx/best.onnx"
    for bad in ("https://host/a.onnx", "https://host/a.onnx#sha256=123", "hf://acme/only.onnx"):
        with pytest.raises(InvalidInputError):
            ModelSource.parse(bad)


def test_unpinned_url_in_settings_fails_the_catalog_with_the_fix(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.yolo.models = {"x": "https://example.com/x.onnx"}
    with pytest.raises(InvalidInputError, match="#sha256="):
        Catalog.from_settings(settings)


def test_default_detector_downloads_once_for_concurrent_items_and_serves_them(
    tmp_path: Path, files_server: ModelFileServer, official_on_loopback: OfficialModel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = _settings(tmp_path)
    files_server.gate = threading.Event()  # every body waits until the test has seen the download start
    app = create_app(settings)
    image = base64.b64encode(image_bytes("bus.jpg")).decode()
    body = {"data": [{"image_base64": image, "is_yolo": True} for _ in range(6)]}
    with TestClient(app) as client:
        key, _ = client.portal.call(app.state.services.keys.create_key, "team")
        auth = {"Authorization": f"Bearer {key}"}
        models = client.get("/v1/models", headers=auth).json()["models"]
        assert models[0]["name"] == "yolo11n" and models[0]["state"]["state"] == "not_downloaded"
        answer: dict[str, object] = {}
        post = threading.Thread(target=lambda: answer.update(r=client.post(V2, json=body, headers=auth)))
        post.start()
        assert files_server.started.wait(30)
        state = client.get("/readyz").json()["checks"]["states"]["yolo11n:1"]
        assert state["state"] == "downloading" and state["total_bytes"] == len(UNTRAINED)
        # Items wait for the model before decoding: none holds decoded pixels while the download runs.
        assert app.state.services.pipeline.pixels.in_use == 0
        files_server.gate.set()
        post.join(60)
        items = answer["r"].json()["result"]["items"]  # type: ignore[attr-defined]
        assert [i["status"] for i in items] == ["done"] * 6, items
        assert {i["yolo"]["model"] for i in items} == {"yolo11n"}
        assert files_server.gets("yolo11n.onnx") == 1
        assert client.get("/v1/models", headers=auth).json()["models"][0]["state"]["state"] == "ready"
    assert _leftovers(settings.models_dir) == [settings.models_dir / "yolo11n.onnx"]
    assert sha256_of(settings.models_dir / "yolo11n.onnx") == official_on_loopback.sha256
    assert any("AGPL-3.0" in r.getMessage() for r in caplog.records)
    # A restart finds the file in the models folder: served as a local detector, nothing downloaded again.
    assert Catalog.from_settings(settings).model("yolo11n").source == str(settings.models_dir / "yolo11n.onnx")


@pytest.mark.parametrize(("mode", "words"), [
    ("404", "HTTP 404"),
    ("dropped", "connection dropped"),
    ("short", "cut short"),
    ("wrong-hash", "sha256 mismatch"),
])
def test_failed_download_is_a_clear_error_and_leaves_no_file(
    tmp_path: Path, files_server: ModelFileServer, official_on_loopback: OfficialModel, mode: str, words: str,
) -> None:
    settings = _settings(tmp_path)
    files = ModelFiles(settings.models, settings.models_dir)
    if mode == "wrong-hash":
        source = ModelSource.parse(files_server.source("other.onnx", sha256="0" * 64))
    else:
        files_server.modes["/yolo11n.onnx"] = mode  # type: ignore[assignment]
        source = ModelSource.parse(official_on_loopback.source)
    with pytest.raises(ModelUnavailableError) as caught:
        files.ensure("yolo11n", source, timeout=60)
    message = caught.value.message
    assert words in message
    for hint in ("sight models pull yolo11n", "SIGHT_YOLO__MODELS", "SIGHT_MODELS__OFFLINE"):
        assert hint in message
    assert _leftovers(settings.models_dir) == []
    assert files.state(source).state == "failed"


def test_item_reports_model_unavailable_with_what_to_do_when_the_download_fails(
    tmp_path: Path, files_server: ModelFileServer, official_on_loopback: OfficialModel,
) -> None:
    files_server.modes["/yolo11n.onnx"] = "404"
    settings = _settings(tmp_path)
    app = create_app(settings)
    with TestClient(app) as client:
        key, _ = client.portal.call(app.state.services.keys.create_key, "team")
        body = {"data": [{"image_base64": base64.b64encode(image_bytes("bus.jpg")).decode(), "is_yolo": True},
                         {"image_base64": base64.b64encode(image_bytes("coffee.png")).decode(), "is_yolo": False}]}
        items = client.post(V2, json=body, headers={"Authorization": f"Bearer {key}"}).json()["result"]["items"]
        assert items[0]["error"]["code"] == "model_unavailable"
        assert "sight models pull yolo11n" in items[0]["error"]["message"]
        assert items[1]["status"] == "done"  # its sibling is untouched
        assert client.get("/readyz").json()["checks"]["states"]["yolo11n:1"] == {"state": "failed"}
        (model,) = [m for m in client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["models"]
                    if m["name"] == "yolo11n"]
        assert model["state"]["state"] == "failed" and "HTTP 404" in model["state"]["reason"]


def test_a_model_that_exists_but_cannot_be_had_is_503_and_internal_error_with_the_reason(
    tmp_path: Path, files_server: ModelFileServer, official_on_loopback: OfficialModel,
) -> None:
    """Declared, not downloadable: the request was right and the server cannot serve it. Deployments answer 503
    (never 404: the model exists), multi-model predict InternalError (never BadRequest), both with the reason."""
    files_server.modes["/yolo11n.onnx"] = "404"
    app = create_app(_settings(tmp_path))
    with TestClient(app) as client:
        key, _ = client.portal.call(app.state.services.keys.create_key, "team")
        auth = {"Authorization": f"Bearer {key}"}
        image = base64.b64encode(image_bytes("bus.jpg")).decode()
        detect = client.post("/v1/detect/latest", json={"data": image}, headers=auth)
        assert detect.status_code == 503, detect.text
        assert detect.json()["detail"]["code"] == "model_unavailable" and "HTTP 404" in detect.json()["error"]
        body = {"input": {"image_base64": image}, "predictions": [{"model_name": "yolo11n"}]}
        (prediction,) = client.post("/v1/predict", json=body, headers=auth).json()["predictions"]
        assert prediction["status"] == "InternalError" and "HTTP 404" in prediction["error_message"]


def test_credentials_in_a_model_url_never_reach_clients_or_logs(
    tmp_path: Path, files_server: ModelFileServer, caplog: pytest.LogCaptureFixture,
) -> None:
    files_server.modes["/other.onnx"] = "404"
    pinned = files_server.source("other.onnx")
    url, _, fragment = pinned.partition("#")
    secret_url = url.replace("http://", "http://mirror-user:s3cr3t@") + "?token=T0K#" + fragment
    settings = _settings(tmp_path)
    settings.yolo = YoloSettings(models={"remote": secret_url}, default_model="remote")
    app = create_app(settings)
    with TestClient(app) as client:
        key, _ = client.portal.call(app.state.services.keys.create_key, "team")
        auth = {"Authorization": f"Bearer {key}"}
        body = {"data": [{"image_base64": base64.b64encode(image_bytes("coffee.png")).decode(), "is_yolo": True}]}
        seen = [client.post(V2, json=body, headers=auth).text, client.get("/v1/models", headers=auth).text,
                client.get("/readyz").text, client.get("/v1/models/remote", headers=auth).text]
    assert "model_unavailable" in seen[0] and "/other.onnx" in seen[0]
    # Sight's own log lines (httpx logs every URL at INFO: `sight serve` keeps it at WARNING).
    for text in [*seen, *(r.getMessage() for r in caplog.records if r.name.startswith("sight"))]:
        assert "s3cr3t" not in text and "T0K" not in text and "mirror-user" not in text, text


def test_failure_is_remembered_for_retry_seconds_then_retried(tmp_path: Path, files_server: ModelFileServer) -> None:
    files_server.modes["/other.onnx"] = "404"
    source = ModelSource.parse(files_server.source("other.onnx"))
    remembered = ModelFiles(ModelsSettings(retry_seconds=3600), tmp_path)
    for _ in range(3):
        with pytest.raises(ModelUnavailableError):
            remembered.ensure("other", source, timeout=30)
    assert files_server.gets("other.onnx") == 1
    retried = ModelFiles(ModelsSettings(retry_seconds=0), tmp_path)
    with pytest.raises(ModelUnavailableError):
        retried.ensure("other", source, timeout=30)
    files_server.modes["/other.onnx"] = "ok"
    path = retried.ensure("other", source, timeout=30)
    assert files_server.gets("other.onnx") == 3 and sha256_of(path) == sha256_of(YOLO11N_UNTRAINED)
    assert path.parent == tmp_path / "downloads"


def test_offline_never_downloads(tmp_path: Path, files_server: ModelFileServer,
                                 official_on_loopback: OfficialModel) -> None:
    settings = _settings(tmp_path, offline=True)
    files = ModelFiles(settings.models, settings.models_dir)
    for text in (official_on_loopback.source, files_server.source("other.onnx"), "hf://acme/det/best.onnx"):
        with pytest.raises(ModelUnavailableError, match="SIGHT_MODELS__OFFLINE"):
            files.ensure("m", ModelSource.parse(text), timeout=30)
    assert files_server.hits == []
    assert files.state(ModelSource.parse(official_on_loopback.source)).state == "failed"


def test_waiting_item_times_out_while_the_download_goes_on(
    tmp_path: Path, files_server: ModelFileServer, official_on_loopback: OfficialModel,
) -> None:
    files_server.gate = threading.Event()
    settings = _settings(tmp_path, wait_timeout=0.2)
    registry = EngineRegistry(settings)
    app = create_app(settings, engines=registry)
    body = {"data": [{"image_base64": base64.b64encode(image_bytes("bus.jpg")).decode(), "is_yolo": True}]}
    with TestClient(app) as client:
        key, _ = client.portal.call(app.state.services.keys.create_key, "team")
        auth = {"Authorization": f"Bearer {key}"}
        item = client.post(V2, json=body, headers=auth).json()["result"]["items"][0]
        assert item["error"]["code"] == "timeout" and "still downloading" in item["error"]["message"]
        files_server.gate.set()
        source = ModelSource.parse(official_on_loopback.source)
        registry.files.ensure("yolo11n", source, timeout=60)  # the same download, still in flight: joined
        item = client.post(V2, json=body, headers=auth).json()["result"]["items"][0]
        assert item["status"] == "done"
    assert files_server.gets("yolo11n.onnx") == 1


def test_waiter_that_gives_up_does_not_cancel_the_download(tmp_path: Path, files_server: ModelFileServer) -> None:
    files_server.gate = threading.Event()
    files = ModelFiles(ModelsSettings(), tmp_path)
    source = ModelSource.parse(files_server.source("other.onnx"))
    with pytest.raises(StageTimeoutError):
        files.ensure("other", source, timeout=0.05)
    files_server.gate.set()
    assert files.ensure("other", source, timeout=60).is_file()
    assert files_server.gets("other.onnx") == 1


def test_hugging_face_source_downloads_through_huggingface_hub(tmp_path: Path, files_server: ModelFileServer,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="huggingface_hub")
    settings = ModelsSettings(hf_endpoint=files_server.url, hf_cache_dir=tmp_path / "hf")
    files = ModelFiles(settings, tmp_path / "models")
    source = ModelSource.parse("hf://acme/detectors/yolo11n.onnx#sha256=" + sha256_of(YOLO11N_UNTRAINED))
    assert files.state(source).state == "missing"
    path = files.ensure("det", source, timeout=60)
    assert sha256_of(path) == sha256_of(YOLO11N_UNTRAINED) and (tmp_path / "hf") in path.parents
    assert files.state(source).state == "present"
    # Offline, the cached file still serves; a file never fetched is a clear error.
    offline = ModelFiles(settings.model_copy(update={"offline": True}), tmp_path / "models")
    assert offline.ensure("det", source, timeout=30) == path
    with pytest.raises(ModelUnavailableError, match="SIGHT_MODELS__OFFLINE"):
        offline.ensure("x", ModelSource.parse("hf://acme/detectors/other.onnx"), timeout=30)
    # A pinned hash that does not match is refused.
    wrong = ModelSource.parse("hf://acme/detectors/other.onnx#sha256=" + "0" * 64)
    with pytest.raises(ModelUnavailableError, match="does not match"):
        files.ensure("x", wrong, timeout=60)


def test_url_detector_in_settings_serves_items_after_one_download(tmp_path: Path,
                                                                  files_server: ModelFileServer) -> None:
    settings = _settings(tmp_path)
    settings.yolo = YoloSettings(models={"remote": files_server.source("other.onnx")}, default_model="remote")
    app = create_app(settings)
    body = {"data": [{"image_base64": base64.b64encode(image_bytes("bus.jpg")).decode(), "is_yolo": True}] * 3}
    with TestClient(app) as client:
        key, _ = client.portal.call(app.state.services.keys.create_key, "team")
        r = client.post(V2, json=body, headers={"Authorization": f"Bearer {key}"})
        assert [i["status"] for i in r.json()["result"]["items"]] == ["done"] * 3
    assert files_server.gets("other.onnx") == 1
    assert json.dumps(str(settings.models_dir / "downloads")) in json.dumps([str(p.parent) for p in
                                                                            _leftovers(settings.models_dir)])


def test_official_module_names_one_place_for_urls() -> None:
    assert official.official_for_url(OFFICIAL["yolo11s"].source) is OFFICIAL["yolo11s"]
    assert official.official_for_url("https://example.com/yolo11s.onnx") is None


def test_eager_start_loads_local_models_and_leaves_downloads_to_first_use(
    tmp_path: Path, files_server: ModelFileServer,
) -> None:
    settings = _settings(tmp_path)
    settings.yolo = YoloSettings(models={"local": str(YOLO11N_UNTRAINED), "remote": files_server.source("other.onnx")},
                                 default_model="local")
    settings.registry.eager = True
    app = create_app(settings)
    with TestClient(app) as client:  # starts: nothing downloaded, nothing waited for
        key, _ = client.portal.call(app.state.services.keys.create_key, "team")
        states = {m["name"]: m["state"]["state"]
                  for m in client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["models"]}
    assert states["local"] == "ready" and states["remote"] == "not_downloaded"
    assert files_server.hits == []


def test_a_file_under_an_official_name_that_is_not_the_official_export_is_flagged(
    tmp_path: Path, official_on_loopback: OfficialModel,
) -> None:
    """``yolo11n.onnx`` in the models folder, other bytes than the pinned export: served under that name, with a
    warning in GET /v1/models and the start banner; the official bytes themselves carry none."""
    from functools import partial

    from rich.console import Console

    from sight.cli.banner import render

    settings = _settings(tmp_path)
    settings.models_dir.mkdir(parents=True)
    (settings.models_dir / "yolo11n.onnx").write_bytes(UNTRAINED + b"\0")  # not the pinned file
    app = create_app(settings)
    with TestClient(app) as client:
        key, _ = client.portal.call(app.state.services.keys.create_key, "team")
        (model,) = [m for m in client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["models"]
                    if m["name"] == "yolo11n"]
        assert "not the official Ultralytics yolo11n export" in model["warning"], model
        console = Console(width=400, record=True)
        console.print(render(app.state.services, None))
        banner = console.export_text()
        assert "warning" in banner and "not the official Ultralytics yolo11n export" in banner
        (settings.models_dir / "yolo11n.onnx").write_bytes(UNTRAINED)  # the pinned bytes (here, on loopback)
        admin, _ = client.portal.call(partial(app.state.services.keys.create_key, "admins", is_admin=True))
        assert client.post("/v1/models:reload", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
        (model,) = [m for m in client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["models"]
                    if m["name"] == "yolo11n"]
        assert model["warning"] is None


def _rapidocr_file(name: str) -> Path:
    from importlib.resources import files

    return Path(str(files("rapidocr") / "models" / name))


@pytest.fixture
def ocr_medium_on_loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModelFileServer, official.OcrFile]]:
    """The pinned PP-OCRv6 medium detector entry, pointed at a loopback server. Its bytes are the wheel's small
    detector (the medium one cannot be fetched here): the code path is the production one, and the engine
    that loads the file really detects with it."""
    data = _rapidocr_file("PP-OCRv6_det_small.onnx").read_bytes()
    with ModelFileServer({"/PP-OCRv6_det_medium.onnx": data}) as server:
        entry = official.OcrFile("det", "medium", f"{server.url}/PP-OCRv6_det_medium.onnx",
                                 hashlib.sha256(data).hexdigest())
        monkeypatch.setitem(official.OCR_FILES, ("det", "medium"), entry)
        yield server, entry


def test_ocr_sizes_beyond_the_wheel_are_pinned_to_rapidocr_3_10s_files() -> None:
    release = "https://www.modelscope.cn/models/RapidAI/RapidOCR/resolve/v3.10.0/onnx/PP-OCRv6"
    assert {(k, f.url, f.sha256) for k, f in official.OCR_FILES.items()} == {
        (("det", "tiny"), f"{release}/det/PP-OCRv6_det_tiny.onnx",
         "f42c0fbd294d95eac1a550e131b277dac97462c8025fa4b6c3cec1b7894bd3d5"),
        (("det", "medium"), f"{release}/det/PP-OCRv6_det_medium.onnx",
         "92078b7355007ccfffcd4c8cd441a3afd4538904d06881b29a155e1e679907c2"),
        (("rec", "tiny"), f"{release}/rec/PP-OCRv6_rec_tiny.onnx",
         "e16e242de5937ad92609223f19bc2aff3727ee40b095f996907c24749bad251b"),
        (("rec", "medium"), f"{release}/rec/PP-OCRv6_rec_medium.onnx",
         "eef444829dbbe18d7fea59a3f6eb75647518d2b3a9568d27c92e42940204894b"),
    }


def test_ocr_small_needs_no_download_and_the_wheel_holds_its_files(tmp_path: Path) -> None:
    engines = EngineRegistry(_settings(tmp_path))
    assert engines.ocr_sources() == {"detector": None, "recognizer": None}
    assert engines.file_state(engines.catalog.model("rapidocr", task="ocr")) is None
    for name in ("PP-OCRv6_det_small.onnx", "PP-OCRv6_rec_small.onnx", "ch_ppocr_mobile_v2.0_cls_mobile.onnx"):
        assert _rapidocr_file(name).is_file(), name


def test_ocr_medium_downloads_once_for_concurrent_loads_verified_and_reads(
        tmp_path: Path, ocr_medium_on_loopback: tuple[ModelFileServer, official.OcrFile]) -> None:
    from sight.models.states import model_state

    server, entry = ocr_medium_on_loopback
    settings = _settings(tmp_path)
    settings.ocr.detector = "medium"
    engines = EngineRegistry(settings)
    ocr = engines.catalog.model("rapidocr", task="ocr")
    assert model_state(engines, ocr).state == "not_downloaded"
    server.gate = threading.Event()
    loaded: list[object] = []
    loaders = [threading.Thread(target=lambda: loaded.append(engines.ocr())) for _ in range(3)]
    for t in loaders:
        t.start()
    assert server.started.wait(30)
    assert model_state(engines, ocr).state == "downloading"
    server.gate.set()
    for t in loaders:
        t.join(60)
    assert len(loaded) == 3 and len({id(e) for e in loaded}) == 1
    assert server.gets("PP-OCRv6_det_medium.onnx") == 1
    state = model_state(engines, ocr)
    assert (state.state, state.provider) == ("ready", "CPU")
    engine = engines.ocr()
    assert engine.sizes == ("medium", "small")  # type: ignore[attr-defined]
    label = Image.open(io.BytesIO(image_bytes("serial-label.png"))).convert("RGB")
    assert engine.read(label).text == "Serial No: SN-4X7Q-2291-B\nModel: ZX-900 Made in 2024"
    [downloaded] = _leftovers(settings.models_dir)
    assert downloaded.name.endswith("PP-OCRv6_det_medium.onnx") and sha256_of(downloaded) == entry.sha256


def test_ocr_download_with_the_wrong_hash_fails_clearly_and_leaves_no_file(
        tmp_path: Path, ocr_medium_on_loopback: tuple[ModelFileServer, official.OcrFile],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sight.models.states import model_state

    _server, entry = ocr_medium_on_loopback
    monkeypatch.setitem(official.OCR_FILES, ("det", "medium"), official.OcrFile("det", "medium", entry.url, "0" * 64))
    settings = _settings(tmp_path)
    settings.ocr.detector = "medium"
    engines = EngineRegistry(settings)
    with pytest.raises(ModelUnavailableError, match="sha256 mismatch"):
        engines.ocr()
    assert _leftovers(settings.models_dir) == []
    state = model_state(engines, engines.catalog.model("rapidocr", task="ocr"))
    assert state.state == "failed" and "sha256 mismatch" in (state.reason or "")


def test_ocr_model_setting_must_be_a_size_or_a_pinned_source(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.ocr.recognizer = "https://example.com/rec.onnx"
    with pytest.raises(InvalidInputError, match="#sha256="):
        EngineRegistry(settings)
    settings.ocr.recognizer = "large"  # not a size, so a path: the file is missing, said at first use
    engines = EngineRegistry(settings)
    with pytest.raises(ModelUnavailableError, match="no ONNX file at large"):
        engines.ocr()
