"""End to end: ``sight serve`` as a subprocess on a socket, and ``sight keys`` against its database."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.helpers import image_bytes
from tests.processes import KEY_RE, SIGHT, SightServer, sight_env


@contextmanager
def _serve(tmp_path: Path) -> Iterator[SightServer]:
    server = SightServer(tmp_path, sight_env(tmp_path))
    try:
        yield server
    finally:
        server.stop()


def _cli(tmp_path: Path, *args: str) -> str:
    done = subprocess.run([*SIGHT, *args], cwd=tmp_path, env=sight_env(tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_serve_prints_first_key_once_and_keys_cli_manages_keys(tmp_path: Path) -> None:
    with _serve(tmp_path) as server:
        r = httpx.get(server.url + "/readyz", timeout=10)
        assert r.status_code == 200
        key = server.first_key()
    assert key, server.output()

    created = _cli(tmp_path, "keys", "create", "--team", "acme", "--name", "ci")
    acme_key = KEY_RE.search(created)
    assert acme_key
    listing = _cli(tmp_path, "keys", "list")
    assert "acme" in listing and "default" in listing
    assert key not in listing and acme_key.group(0) not in listing
    assert "sk-sight" not in listing
    db = (tmp_path / "sight.db").read_bytes()
    assert key.rsplit("-", 1)[1].encode() not in db, "only a hash of the key is stored"

    with _serve(tmp_path) as server:
        base = server.url
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
    assert server.first_key() is None, "the first key is printed only on the very first start"
    assert key not in server.output()
