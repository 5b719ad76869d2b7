"""``sight models pull`` in process: the official route, its licence note and progress, no PyTorch needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sight.cli import app
from sight.models.official import OFFICIAL, OfficialModel
from tests.conftest import YOLO11N_UNTRAINED
from tests.model_servers import ModelFileServer, sha256_of


def test_pull_official_name_downloads_verifies_and_shows_the_licence_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = YOLO11N_UNTRAINED.read_bytes()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIGHT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SIGHT_MODELS__OFFLINE", "false")
    with ModelFileServer({"/yolo11s.onnx": data}) as files:
        monkeypatch.setitem(OFFICIAL, "yolo11s", OfficialModel("yolo11s", f"{files.url}/yolo11s.onnx", len(data),
                                                               sha256_of(YOLO11N_UNTRAINED)))
        result = CliRunner().invoke(app, ["models", "pull", "yolo11s"])
        assert result.exit_code == 0, result.output
        assert result.output.count("AGPL-3.0") == 1
        assert "downloading yolo11s" in result.output and "served as yolo11s" in result.output
        assert sha256_of(tmp_path / "data" / "models" / "yolo11s.onnx") == sha256_of(YOLO11N_UNTRAINED)
        again = CliRunner().invoke(app, ["models", "pull", "yolo11s"])
        assert again.exit_code == 0 and "already here" in again.output and "AGPL" not in again.output
        assert files.gets("yolo11s.onnx") == 1
        import sys

        assert "torch" not in sys.modules and "ultralytics" not in sys.modules
