"""The settings object: the runtime group's new names, and its former ones still read with a deprecation line."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from sight import config
from sight.cli import app
from sight.config import Settings


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


def test_the_new_name_wins_over_the_former_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHT_ENGINE__KIND", "ray")
    monkeypatch.setenv("SIGHT_RUNTIME__KIND", "local")
    assert Settings(_env_file=None).runtime.kind == "local"


def test_serve_takes_runtime_and_hides_the_former_engine_flag() -> None:
    out = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200).output
    assert "--runtime" in out and "--engine" not in out
    refused = CliRunner().invoke(app, ["serve", "--engine", "nowhere"])
    assert refused.exit_code == 2 and "--runtime is local or ray, not 'nowhere'" in refused.output
