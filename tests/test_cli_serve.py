"""End to end: ``sight serve`` as a subprocess on a socket, and ``sight keys`` against its database."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import nudenet_path
from tests.helpers import image_bytes

KEY_RE = re.compile(r"sk-sight-key_[a-z0-9]{12}-[A-Za-z0-9_\-]+")
SIGHT = [sys.executable, "-m", "sight"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHT_")}
    env.update({
        "SIGHT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'sight.db'}",
        "SIGHT_DATA_DIR": str(tmp_path / "data"),
        "SIGHT_YOLO__MODELS": json.dumps({"nudenet": str(nudenet_path())}),
        "SIGHT_YOLO__DEFAULT_MODEL": "nudenet",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@contextmanager
def _serve(tmp_path: Path, port: int) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    proc = subprocess.Popen([*SIGHT, "serve", "--port", str(port)], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, "sight serve exited early"
                time.sleep(0.1)
        else:
            raise AssertionError("sight serve did not come up")
        yield proc, output
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        output.append(out)


def _cli(tmp_path: Path, *args: str) -> str:
    done = subprocess.run([*SIGHT, *args], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_serve_prints_first_key_once_and_keys_cli_manages_keys(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with _serve(tmp_path, port) as (_proc, output):
        r = httpx.get(base + "/readyz", timeout=10)
        assert r.status_code == 200
    first_key = KEY_RE.search(output[0])
    assert first_key, output[0]
    key = first_key.group(0)

    created = _cli(tmp_path, "keys", "create", "--team", "acme", "--name", "ci")
    acme_key = KEY_RE.search(created)
    assert acme_key
    listing = _cli(tmp_path, "keys", "list")
    assert "acme" in listing and "default" in listing
    assert key not in listing and acme_key.group(0) not in listing
    assert "sk-sight" not in listing
    db = (tmp_path / "sight.db").read_bytes()
    assert key.rsplit("-", 1)[1].encode() not in db, "only a hash of the key is stored"

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with _serve(tmp_path, port) as (_proc, output):
        files = [("files", ("astronaut.png", image_bytes("astronaut.png")))]
        data = {"metadata": [json.dumps({"is_yolo": True, "is_llm": False})]}
        r = httpx.post(base + "/api/v1/inference/predict/batch", data={**data, "api_key": key}, files=files,
                       timeout=60)
        assert r.status_code == 200 and r.json()["result"]["items"][0]["yolo"]["detections"]
        acme_id = acme_key.group(0).split("-")[2]
        auth = {"Authorization": f"Bearer {acme_key.group(0)}"}
        assert httpx.post(base + "/api/v1/inference/predict/batch", data=data, files=files, headers=auth,
                          timeout=60).status_code == 200
        _cli(tmp_path, "keys", "revoke", acme_id)
        r = httpx.post(base + "/api/v1/inference/predict/batch", data=data, files=files, headers=auth, timeout=60)
        assert r.status_code == 401
    assert not KEY_RE.search(output[0]), "the first key is printed only on the very first start"
    assert key not in output[0]
