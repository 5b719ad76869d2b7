"""End to end: ``sight serve`` as a subprocess on a socket, and ``sight keys`` against its database."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.helpers import image_bytes, key_parts
from tests.processes import KEY_RE, SIGHT, SightServer, sight_env

pytestmark = pytest.mark.slow  # starts `sight` subprocesses


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
    assert key_parts(key)[1].encode() not in db, "only a hash of the key is stored"

    with _serve(tmp_path) as server:
        base = server.url
        files = [("files", ("astronaut.png", image_bytes("astronaut.png")))]
        data = {"metadata": [json.dumps({"is_yolo": True, "is_llm": False})]}
        r = httpx.post(base + "/api/v1/inference/predict/batch", data={**data, "api_key": key}, files=files,
                       timeout=60)
        assert r.status_code == 200 and r.json()["result"]["items"][0]["yolo"]["detections"]
        acme_id, _ = key_parts(acme_key.group(0))
        auth = {"Authorization": f"Bearer {acme_key.group(0)}"}
        assert httpx.post(base + "/api/v1/inference/predict/batch", data=data, files=files, headers=auth,
                          timeout=60).status_code == 200
        _cli(tmp_path, "keys", "revoke", acme_id)
        r = httpx.post(base + "/api/v1/inference/predict/batch", data=data, files=files, headers=auth, timeout=60)
        assert r.status_code == 401
    assert server.first_key() is None, "the first key is printed only on the very first start"
    assert key not in server.output()
    assert "detector nudenet:1 loaded from" in server.output(), "Sight's own log lines are shown"
    assert "session run(s) at once" in server.output()


def test_batches_cli_adds_a_folder_files_and_urls_and_writes_jsonl(tmp_path: Path) -> None:
    import shutil

    from tests.conftest import IMAGES

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(IMAGES / "astronaut.png", folder / "a.png")
    shutil.copy(IMAGES / "coffee.png", folder / "sub" / "c.png")
    (folder / "notes.txt").write_text("not an image")
    with _serve(tmp_path) as server:
        key = server.first_key()
        assert key
        env = {"--url": server.url, "--key": key}
        opts = [x for pair in env.items() for x in pair]
        bid = _cli(tmp_path, "batches", "create", "cli run", *opts).strip().splitlines()[-1]
        assert bid.startswith("batch_")
        out = _cli(tmp_path, "batches", "add", bid, str(folder), str(IMAGES / "rocket.jpg"),
                   "http://127.0.0.1:1/private.png", *opts)
        assert "added 4 requests" in out
        watched = _cli(tmp_path, "batches", "status", bid, "--watch", "--interval", "0.2", *opts)
        assert "ended" in watched and "4 requests: 3 ok, 1 failed" in watched
        _cli(tmp_path, "batches", "results", bid, "-o", str(tmp_path / "r.jsonl"), *opts)
        lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
        assert len(lines) == 4
        names = sorted(x["batch_result"]["response"]["vision_predict"]["filename"] for x in lines
                       if "batch_result" in x)
        assert names == ["a.png", "rocket.jpg", "sub/c.png"]
        assert [x["error"]["code"] for x in lines if "error" in x] == ["url_not_allowed"]
        other = _cli(tmp_path, "batches", "create", "to cancel", *opts).strip().splitlines()[-1]
        assert "cancelled" in _cli(tmp_path, "batches", "cancel", other, *opts)
        empty = _cli(tmp_path, "batches", "create", "nothing yet", *opts).strip().splitlines()[-1]
        listed = _cli(tmp_path, "batches", "list", *opts).splitlines()
        assert [line.split()[0] for line in listed] == [empty, other, bid], "newest first"
        assert "nothing yet  open, no requests" in listed[0] and "to cancel  cancelled" in listed[1]
        assert "cli run  ended  4 requests" in listed[2]
        assert len(_cli(tmp_path, "batches", "list", "--limit", "2", *opts).splitlines()) == 2
        bad = subprocess.run([*SIGHT, "batches", "status", "batch_nope", *opts], cwd=tmp_path,
                             env=sight_env(tmp_path), capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and "not_found" in bad.stdout


def test_models_list_asks_the_server_and_says_when_it_cannot(tmp_path: Path) -> None:
    """The server's models with their states, whatever this shell's settings say; with no server, this
    shell's settings, saying so."""
    with _serve(tmp_path) as server:
        key = server.first_key()
        assert key
        shell = {k: v for k, v in sight_env(tmp_path).items() if not k.startswith("SIGHT_YOLO__")}  # yolo11n here
        listed = subprocess.run([*SIGHT, "models", "list", "--url", server.url, "--key", key], cwd=tmp_path,
                                env={**shell, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert f"served by {server.url}" in listed.stdout and "nudenet" in listed.stdout
        assert "yolo11n" not in listed.stdout and ("ready" in listed.stdout or "not_loaded" in listed.stdout)
        assert "vision LLM: unavailable" in listed.stdout
    alone = subprocess.run([*SIGHT, "models", "list", "--url", "http://127.0.0.1:9", "--key", key], cwd=tmp_path,
                           env={**shell, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "did not answer" in alone.stdout and "showing this shell's settings instead (no states)" in alone.stdout
    assert "yolo11n" in alone.stdout


def test_serve_banner_tells_the_truth_and_pull_downloads_before_serving(tmp_path: Path) -> None:
    from tests.conftest import YOLO11N_UNTRAINED, nudenet_path
    from tests.model_servers import ModelFileServer

    with ModelFileServer({"/remote.onnx": YOLO11N_UNTRAINED.read_bytes()}) as files:
        models = {"nudenet": str(nudenet_path()), "remote": files.source("remote.onnx")}
        env = sight_env(tmp_path, SIGHT_YOLO__MODELS=json.dumps(models))
        server = SightServer(tmp_path, env)
        try:
            banner = server.output()
            key = server.first_key()
        finally:
            server.stop()
        assert key and f"API key    {key}" in banner
        lines = {line.split(":")[0].strip(): line for line in banner.splitlines() if ": " in line}
        assert "loaded" in lines["Detectors  nudenet (default)"] and "18 classes, CPU" in lines[
            "Detectors  nudenet (default)"]
        # The tests' environment turns downloads off, and the banner says so (online it says "downloads on first
        # use (or now: sight models pull remote)", as GET /v1/models does: test_model_downloads).
        assert "failed: not downloaded, and downloads are off (SIGHT_MODELS__OFFLINE)" in lines["remote"]
        assert "OCR        rapidocr" in banner and "loads on first use" in banner
        assert "LLM        none" in banner and "SIGHT_LLM__BASE_URL" in banner
        assert "Database   sqlite+aiosqlite:///" in banner and "/docs" in banner
        assert f"Console    {server.url}/" in banner
        assert files.hits == [], "nothing is downloaded at start without --pull"

        pulled = SightServer(tmp_path, {**env, "SIGHT_MODELS__OFFLINE": "false"}, "--pull")
        try:
            out = pulled.output()
            assert "saved" in out and "(sha256 verified)" in out
            remote = next(line for line in out.splitlines() if line.strip().startswith("remote"))
            assert "loads on first use" in remote
            assert pulled.first_key() is None and "created earlier" in out
        finally:
            pulled.stop()
        assert files.gets("remote.onnx") == 1


def test_models_pull_downloads_a_pinned_url_once_with_progress(tmp_path: Path) -> None:
    from tests.conftest import YOLO11N_UNTRAINED
    from tests.model_servers import ModelFileServer, sha256_of

    with ModelFileServer({"/det.onnx": YOLO11N_UNTRAINED.read_bytes()}) as files:
        env = {**sight_env(tmp_path), "SIGHT_MODELS__OFFLINE": "false"}

        def pull(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*SIGHT, "models", "pull", *args], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=120)

        first = pull(files.source("det.onnx"))
        assert first.returncode == 0, first.stdout + first.stderr
        assert "downloading det" in first.stdout and "saved" in first.stdout and "SIGHT_YOLO__MODELS" in first.stdout
        saved = list((tmp_path / "data" / "models" / "downloads").iterdir())
        assert len(saved) == 1 and sha256_of(saved[0]) == sha256_of(YOLO11N_UNTRAINED)
        again = pull(files.source("det.onnx"))
        assert again.returncode == 0 and "already here" in again.stdout
        wrong = pull(files.source("det.onnx", sha256="f" * 64))
        assert wrong.returncode == 1 and "sha256 mismatch" in wrong.stdout
        unpinned = pull(f"{files.url}/det.onnx")
        assert unpinned.returncode == 2 and "#sha256=" in unpinned.stdout
        assert files.gets("det.onnx") == 2
        assert len(list((tmp_path / "data" / "models").rglob("*.part"))) == 0
