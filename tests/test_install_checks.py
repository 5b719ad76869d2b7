"""What Sight says about its own install: two wheels writing one module (named, with the command that fixes
it, in the banner and in GET /v1/models), no ONNX Runtime at all (a clear start-up error), and where each
model runs (the execution provider its session got, and why when it is not the one asked for)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from sight.api.app import create_app
from sight.config import Settings
from sight.engines.wheels import install_problems
from tests.processes import sight_env


@pytest.fixture
def opencv_python_beside_headless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A second wheel writing cv2, as pip leaves it when opencv-python is installed beside the headless build:
    its dist-info (metadata and the RECORD of the files it wrote) in a folder on sys.path."""
    site = tmp_path / "site"
    info = site / "opencv_python-4.10.0.84.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: opencv-python\nVersion: 4.10.0.84\n")
    (info / "RECORD").write_text("cv2/__init__.py,,\ncv2/version.py,,\nopencv_python-4.10.0.84.dist-info/RECORD,,\n")
    monkeypatch.syspath_prepend(str(site))
    install_problems.cache_clear()
    yield
    install_problems.cache_clear()


def test_a_clean_install_has_nothing_to_say() -> None:
    install_problems.cache_clear()
    assert install_problems() == ()


def test_two_wheels_writing_cv2_are_named_in_the_banner_and_the_model_list_with_the_fix(
        opencv_python_beside_headless: None, settings: Settings) -> None:
    from sight.cli.banner import render

    fix = "pip uninstall -y opencv-python opencv-python-headless && pip install opencv-python-headless"
    [problem] = install_problems()
    assert "opencv-python and opencv-python-headless both write the cv2 module" in problem and problem.endswith(fix)
    app = create_app(settings)
    with TestClient(app) as client:
        key, _ = client.portal.call(app.state.services.keys.create_key, "team")
        listing = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
        assert listing["warnings"] == [problem]
        console = Console(width=400, record=True)
        console.print(render(app.state.services, None))
        assert fix in console.export_text()


@pytest.mark.slow
def test_serve_without_onnxruntime_stops_at_once_saying_what_to_install(tmp_path: Path) -> None:
    """A base install (``pip install -e .``) has no ONNX Runtime: the module is hidden from the import system
    here, as it is absent there."""
    hide = ("import importlib.abc, sys\n"
            "class Hide(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'onnxruntime' or name.startswith('onnxruntime.'):\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Hide())\n"
            "from sight.cli import main\n"
            "sys.argv = ['sight', 'serve', '--port', '1']\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", hide], cwd=tmp_path, env=sight_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ONNX Runtime is not installed: pip install -e '.[cpu]'" in done.stderr
    assert "'.[gpu]' for NVIDIA GPUs" in done.stderr


def test_the_provider_a_model_got_is_told_and_a_fallback_is_a_warning_with_its_reason(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """CUDA asked for on an install without it (the CPU wheel of ONNX Runtime): ONNX Runtime runs the sessions
    on the CPU; Sight logs why and reports the CPU, not what it asked for."""
    import logging

    from sight.cli.banner import render

    settings.yolo.providers = ["CUDAExecutionProvider"]
    settings.ocr.providers = ["CUDAExecutionProvider"]
    app = create_app(settings)
    with TestClient(app) as client:
        key, _ = client.portal.call(app.state.services.keys.create_key, "team")
        auth = {"Authorization": f"Bearer {key}"}
        engines = app.state.services.hub.current
        engines.detector("nudenet")
        engines.ocr()
        models = {m["name"]: m for m in client.get("/v1/models", headers=auth).json()["models"]}
        assert models["nudenet"]["state"]["provider"] == "CPU"
        assert models["rapidocr"]["state"]["provider"] == "CPU"
        console = Console(width=400, record=True)
        console.print(render(app.state.services, None))
        banner = console.export_text()
        assert "nudenet" in banner and ", CPU, FP32 - loaded" in banner and "recognition, CPU) - loaded" in banner
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "not on the requested CUDAExecutionProvider" in r.getMessage()]
    assert any(w.startswith("model 'nudenet' runs on CPUExecutionProvider") for w in warnings), warnings
    assert any(w.startswith("OCR rec model runs on CPUExecutionProvider") for w in warnings), warnings
    assert all("this ONNX Runtime build has no CUDAExecutionProvider" in w and "pip install -e '.[gpu]'" in w
               for w in warnings)
