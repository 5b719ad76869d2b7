"""``sight serve`` and ``sight worker`` as real subprocesses, for end-to-end and crash tests."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from tests.conftest import nudenet_path
from tests.helpers import wait_until

KEY_RE = re.compile(r"sk-sight-key_[a-z0-9]{12}-[A-Za-z0-9_\-]+")
SIGHT = [sys.executable, "-m", "sight"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sight_env(workdir: Path, database_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHT_")}
    env.update({
        "SIGHT_DATABASE_URL": database_url or f"sqlite+aiosqlite:///{workdir / 'sight.db'}",
        "SIGHT_DATA_DIR": str(workdir / "data"),
        "SIGHT_YOLO__MODELS": json.dumps({"nudenet": str(nudenet_path())}),
        "SIGHT_YOLO__DEFAULT_MODEL": "nudenet",
        # Hermetic: never download a model, never find a developer's own Ollama.
        "SIGHT_MODELS__OFFLINE": "true",
        "SIGHT_LLM__DISCOVER": "false",
        "PYTHONUNBUFFERED": "1",
        **extra,
    })
    return env


class SightProcess:
    """One ``sight`` subprocess; output goes to a file so a chatty process can never block on a pipe."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="sight-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen([*SIGHT, *args], cwd=workdir, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


class SightServer(SightProcess):
    def __init__(self, workdir: Path, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(["serve", "--port", str(self.port), *args], workdir, env)
        try:  # start-up has no event to wait on from outside the process: ask /healthz until it answers
            wait_until(self._healthy, "sight serve answering /healthz", timeout=60, poll=0.1)
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}:\n{self.output()}") from None

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            if self.proc.poll() is not None:
                raise AssertionError("sight serve exited early") from None
            return False

    def first_key(self) -> str | None:
        match = KEY_RE.search(self.output())
        return match.group(0) if match else None
