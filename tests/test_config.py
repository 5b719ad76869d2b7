"""The settings object: the runtime group's new names, and its former ones still read with a deprecation line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sight import config
from sight.cli import app
from sight.config import RuntimeSettings, Settings


@pytest.fixture(autouse=True)
def warn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_warned_legacy", False)


def test_runtime_settings_are_read_from_sight_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHT_RUNTIME__KIND", "ray")
    monkeypatch.setenv("SIGHT_RUNTIME__DETECTOR__NUM_GPUS", "0.5")
    settings = Settings(_env_file=None)
    assert settings.runtime.kind == "ray" and settings.runtime.detector.num_gpus == 0.5


def test_former_engine_names_are_still_read_with_one_deprecation_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SIGHT_ENGINE__KIND", "ray")
    monkeypatch.setenv("SIGHT_ENGINE__RETRIES", "5")
    with caplog.at_level(logging.WARNING, logger="sight.config"):
        first, second = Settings(_env_file=None), Settings(_env_file=None)
    assert first.runtime.kind == second.runtime.kind == "ray" and first.runtime.retries == 5
    lines = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(lines) == 1 and "SIGHT_RUNTIME__" in lines[0] and "SIGHT_ENGINE__KIND" in lines[0], lines


def test_the_new_name_wins_over_the_former_one_field_by_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHT_ENGINE__KIND", "ray")
    monkeypatch.setenv("SIGHT_RUNTIME__KIND", "local")
    monkeypatch.setenv("SIGHT_RUNTIME__DETECTOR__NUM_CPUS", "2")
    monkeypatch.setenv("SIGHT_ENGINE__DETECTOR__NUM_GPUS", "1")
    runtime = Settings(_env_file=None).runtime
    assert runtime.kind == "local" and runtime.detector.num_cpus == 2 and runtime.detector.num_gpus == 1


def test_former_names_follow_the_dotenv_file_the_settings_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("SIGHT_ENGINE__KIND=ray\n")
    (tmp_path / "prod.env").write_text("SIGHT_ENGINE__ADDRESS=ray://head:10001\n")
    assert Settings().runtime.kind == "ray"
    assert Settings(_env_file=None).runtime.kind == "local", "no dotenv file asked: none read"
    assert Settings(_env_file=tmp_path / "prod.env").runtime.address == "ray://head:10001"
    assert Settings(runtime=RuntimeSettings(kind="local")).runtime.kind == "local", "given values win"


def test_serve_takes_runtime_and_hides_the_former_engine_flag(caplog: pytest.LogCaptureFixture) -> None:
    out = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    assert "--runtime" in out and "--engine" not in out
    with caplog.at_level(logging.WARNING, logger="sight.cli.serve"):
        refused = CliRunner().invoke(app, ["serve", "--engine", "nowhere"])
    assert refused.exit_code == 2 and "--runtime is local or ray, not 'nowhere'" in refused.output
    assert any("--engine is deprecated" in r.getMessage() for r in caplog.records)
