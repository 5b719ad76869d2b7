"""The Ray runtime's client asks Serve's status as it does for the models' states: cached and with a timeout,
also when it looks up a Serve deployment it has not seen. Serve here is a stand-in for Ray's ``serve`` module
(its ``status``, ``get_deployment_handle`` and ``get_replica_context``): the behaviour on a real cluster is
tests/test_ray_runtime.py's."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sight.config import RuntimeSettings, Settings
from sight.errors import EngineUnavailableError

# Ray's own import-time warnings, as in tests/test_ray_runtime.py.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@dataclass
class Application:
    deployments: dict[str, Any]


@dataclass
class Status:
    applications: dict[str, Application]


@dataclass
class StandInServe:
    deployments: dict[str, Any]
    asked: int = 0
    gate: threading.Event | None = None
    handles: list[str] = field(default_factory=list)

    def status(self) -> Status:
        self.asked += 1
        if self.gate is not None:
            self.gate.wait(30)
        return Status({"sight": Application(self.deployments)})

    def get_deployment_handle(self, name: str, app_name: str) -> str:
        self.handles.append(name)
        return f"handle of {name}"

    def get_replica_context(self) -> Any:
        from ray.serve.exceptions import RayServeException

        raise RayServeException("not in a replica")


def _runtime(tmp_path: Path, serve: StandInServe) -> Any:
    from sight.runtimes.ray.client import RayRuntime

    settings = Settings(_env_file=None, data_dir=tmp_path, runtime=RuntimeSettings(kind="ray"))
    return RayRuntime(settings, serve=serve)


@pytest.mark.anyio
async def test_missing_serve_deployments_are_refused_from_one_cached_status(tmp_path: Path) -> None:
    serve = StandInServe({"detect-a-v1": object()})
    runtime = _runtime(tmp_path, serve)
    for _ in range(3):
        with pytest.raises(EngineUnavailableError, match="OCR is not deployed"):
            await runtime.serve_handle("ocr", "OCR")
    assert await runtime.serve_handle("detect-a-v1", "model a:1") == "handle of detect-a-v1"
    assert serve.asked == 1, "one status answers lookups within its TTL"


@pytest.mark.anyio
async def test_a_serve_status_that_does_not_answer_is_a_clear_error_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sight.runtimes.ray import client

    monkeypatch.setattr(client, "STATUS_TIMEOUT", 0.2)
    serve = StandInServe({}, gate=threading.Event())
    runtime = _runtime(tmp_path, serve)
    try:
        with pytest.raises(EngineUnavailableError, match="Ray Serve did not answer"):
            await runtime.serve_handle("ocr", "OCR")
    finally:
        assert serve.gate is not None
        serve.gate.set()
