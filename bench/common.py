"""Helpers the benchmarks share: the shared assets and a `sight serve` subprocess."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_MODEL = SHARED / "models" / "yolo11n-untrained.onnx"
PHOTOS = ["bus.jpg", "rocket.jpg"]
KEY_RE = re.compile(r"sk-sight-key_[a-z0-9]{12}-[A-Za-z0-9_\-]+")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def spawn_server(model: Path, workdir: Path, **env_extra: str) -> tuple[subprocess.Popen[str], str, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHT_")}
    env.update({
        "SIGHT_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'bench.db'}",
        "SIGHT_DATA_DIR": str(workdir / "data"),
        "SIGHT_YOLO__MODELS": json.dumps({"yolo11n": str(model)}),
        "SIGHT_SERVER__LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
        **env_extra,
    })
    log = (workdir / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "sight", "serve", "--port", str(port)], cwd=workdir, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    key = ""
    deadline = time.monotonic() + 60
    while not key and time.monotonic() < deadline:
        if match := KEY_RE.search((workdir / "serve.log").read_text()):
            key = match.group(0)
        elif proc.poll() is not None:
            raise SystemExit("sight serve exited before printing its key")
        else:
            time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url, key
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("sight serve did not come up")
