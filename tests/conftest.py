"""Fixtures: temp settings, the app with its lifespan, real engines, real loopback servers."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sight.api.app import create_app
from sight.config import (
    BlobSettings,
    FetchSettings,
    LLMSettings,
    ModelsSettings,
    ServerSettings,
    Settings,
    YoloSettings,
)
from sight.engines.base import Detector, OcrEngine
from sight.models.registry import EngineRegistry
from tests.servers import FakeLLMServer, ImageServer, LiveServer

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIGHT_SHARED_DIR", ROOT.parent / "shared"))
IMAGES = SHARED / "images"
YOLO11N_UNTRAINED = SHARED / "models" / "yolo11n-untrained.onnx"


def nudenet_path() -> Path:
    """The real Ultralytics YOLOv8n export inside the nudenet wheel (the test extra installs it)."""
    from importlib.resources import files

    try:
        path = Path(str(files("nudenet") / "320n.onnx"))
    except ModuleNotFoundError as exc:
        raise RuntimeError("the tests' real detector comes in the nudenet wheel: pip install -e '.[test]'") from exc
    if not path.is_file():
        raise RuntimeError(f"the tests' real detector is missing ({path}): pip install --force-reinstall nudenet")
    return path


KEY_PATTERN = re.compile(r"sk-sight-key_[a-z0-9]{12}-[A-Za-z0-9_\-]{20,}")


@pytest.fixture(autouse=True)
def no_key_leaks(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Across the whole suite: no API key in any log line, nor in any response the test client reads."""
    from starlette import testclient

    leaks: list[str] = []
    original = testclient._TestClientTransport.handle_request

    def scanned(self: Any, request: Any) -> Any:
        response = original(self, request)
        body = response.read()
        if KEY_PATTERN.search(body.decode("latin-1")) or KEY_PATTERN.search(str(response.headers)):
            leaks.append(f"{request.method} {request.url}")
        return response

    monkeypatch.setattr(testclient._TestClientTransport, "handle_request", scanned)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="sight")
    yield
    records = caplog.get_records("setup") + caplog.get_records("call")
    leaks += [r.getMessage() for r in records if KEY_PATTERN.search(r.getMessage())]
    assert not leaks, f"API keys leaked into responses or logs: {leaks}"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def nudenet_detector() -> Detector:
    from sight.engines.cpus import usable_cpus
    from sight.engines.onnx_yolo import OnnxYoloDetector

    # Loaded as `sight serve` loads it: one thread per run, and a wide session for lone images.
    return OnnxYoloDetector.load("nudenet", nudenet_path(), intra_op_threads=1, wide_threads=usable_cpus())


@pytest.fixture(scope="session")
def ocr_engine() -> OcrEngine:
    from sight.engines.rapid_ocr import RapidOcrEngine

    return RapidOcrEngine.load()


@pytest.fixture(scope="session")
def llm_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def llm(llm_server: FakeLLMServer) -> FakeLLMServer:
    llm_server.reset()
    return llm_server


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    with ImageServer(IMAGES) as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, llm_server: FakeLLMServer) -> Settings:
    return Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'sight.db'}",
        data_dir=tmp_path / "data",
        server=ServerSettings(max_files=16, max_body_bytes=40 * 1024 * 1024),
        yolo=YoloSettings(models={"nudenet": nudenet_path()}, default_model="nudenet"),
        llm=LLMSettings(base_url=llm_server.url, model="fake-vl", timeout=2.0, retries=1, backoff=0.01),
        fetch=FetchSettings(),
        models=ModelsSettings(offline=True),  # tests never download a model unless they serve it on loopback
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL: SIGHT_TEST_POSTGRES_URL, or a throwaway cluster from Debian's binaries."""
    from tests.pg import TempPostgres

    if url := os.environ.get("SIGHT_TEST_POSTGRES_URL"):
        yield url
        return
    server = TempPostgres()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
    from tests.pg import fresh_database

    return fresh_database(request.getfixturevalue("postgres_server"))


S3_BUCKET = "sight-test"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 API on loopback (moto's threaded server) holding one bucket, ``S3_BUCKET``; yields its URL."""
    import httpx
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        httpx.put(f"{url}/{S3_BUCKET}").raise_for_status()  # CreateBucket, path style
        yield url
    finally:
        server.stop()


@pytest.fixture
def blob_settings(request: pytest.FixtureRequest) -> BlobSettings:
    """Where a test's batch images go: ``file`` (the default: ``data_dir/blobs``) or ``s3`` (a fresh prefix of the
    loopback S3 bucket). A test runs on both with ``@pytest.mark.parametrize("blob_settings", ["file", "s3"],
    indirect=True)``; a module puts them into its ``settings``."""
    if getattr(request, "param", "file") == "file":
        return BlobSettings()
    import secrets

    from pydantic import SecretStr

    return BlobSettings(url=f"s3://{S3_BUCKET}/{secrets.token_hex(6)}/blobs",
                        endpoint_url=request.getfixturevalue("s3_server"), region="us-east-1",
                        access_key_id="testing", secret_access_key=SecretStr("testing"), force_path_style=True)


@pytest.fixture
def engines(settings: Settings, nudenet_detector: Detector, ocr_engine: OcrEngine) -> EngineRegistry:
    """Real engines, loaded once per session and shared (as one server shares them)."""
    return EngineRegistry(settings, detectors={"nudenet": nudenet_detector}, ocr=ocr_engine)


@pytest.fixture
def app(settings: Settings, engines: EngineRegistry):  # type: ignore[no-untyped-def]
    return create_app(settings, engines=engines)


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app) as c:
        yield c


@pytest.fixture
def api_key(client: TestClient, app) -> str:  # type: ignore[no-untyped-def]
    key, _info = client.portal.call(app.state.services.keys.create_key, "team-a")  # type: ignore[union-attr]
    return key


@pytest.fixture
def live(app) -> Iterator[LiveServer]:  # type: ignore[no-untyped-def]
    """The app served by a real uvicorn on a loopback port (for disconnects and concurrency)."""
    with LiveServer(app) as server:
        yield server
