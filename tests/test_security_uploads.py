"""Uploads: too many parts, bodies over the cap, clients that abort mid-upload; no temp file outlives its
request."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.helpers import image_bytes, wait_until
from tests.processes import SightServer, sight_env

BATCH = "/api/v1/inference/predict/batch"


def test_too_many_parts_answer_413(client: TestClient, api_key: str) -> None:
    fields = {"api_key": api_key, "metadata": ["{}"] * 40}  # max_files is 16: fields are capped alongside
    r = client.post(BATCH, data=fields, files=[("files", ("a.png", image_bytes("coffee.png")))])
    assert r.status_code == 413 and r.json()["detail"]["code"] == "payload_too_large"


def _open_temp_files(pid: int, tmpdir: Path) -> list[str]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(tmpdir)):
            found.append(target)
    return found


@pytest.mark.slow
def test_aborted_and_oversized_uploads_leave_no_temp_files(tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = sight_env(tmp_path, TMPDIR=str(tmpdir), SIGHT_SERVER__MAX_BODY_BYTES=str(20 * 1024 * 1024))
    server = SightServer(tmp_path, env)
    try:
        key = server.first_key()
        port = int(server.url.rsplit(":", 1)[1])
        boundary = "sightboundary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"api_key\"\r\n\r\n{key}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.jpg\"\r\n"
                "Content-Type: image/jpeg\r\n\r\n").encode()
        for _ in range(3):  # promise 15 MB, send 4 MB (past the 1 MB in-memory spool), hang up
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall((f"POST {BATCH} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                              f"boundary={boundary}\r\nContent-Length: {15 * 1024 * 1024}\r\n\r\n").encode())
                sock.sendall(head + b"\xff" * (4 * 1024 * 1024))
                # Hang up only once the upload has gone past the spool: the server holds a temp file for it.
                wait_until(lambda: _open_temp_files(server.proc.pid, tmpdir), "the upload spooled to a temp file")
            wait_until(lambda: not _open_temp_files(server.proc.pid, tmpdir), "the aborted upload's temp file closed")
        # Over the cap: refused from Content-Length before the body is read.
        r = httpx.post(server.url + BATCH, data={"api_key": key, "metadata": ["{}"]},
                       files=[("files", ("huge.jpg", b"\0" * (21 * 1024 * 1024)))], timeout=60)
        assert r.status_code == 413
        # A normal request still works, and afterwards nothing of the above is held open or on disk.
        ok = httpx.post(server.url + BATCH, data={"api_key": key, "metadata": ['{"is_yolo": true}']},
                        files=[("files", ("a.png", image_bytes("astronaut.png")))], timeout=60)
        assert ok.status_code == 200
        wait_until(lambda: not _open_temp_files(server.proc.pid, tmpdir), "the server closing every temp file")
        # onnxruntime writes a 51-byte ".ses" marker into TMPDIR at import; nothing else may be there.
        assert [p.name for p in tmpdir.iterdir() if p.name != ".ses"] == []
    finally:
        server.stop()


def test_chunked_multipart_over_the_cap_answers_413(client: TestClient, api_key: str, app) -> None:  # type: ignore[no-untyped-def]
    cap = app.state.services.settings.server.max_body_bytes
    boundary = "sightboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"api_key\"\r\n\r\n{api_key}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is met while the body streams in
        yield head
        for _ in range(cap // (1024 * 1024) + 2):
            yield b"\xff" * (1024 * 1024)

    for path in (BATCH, "/api/v1/inference/predict/stream"):
        r = client.post(path, content=chunks(),
                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413, r.text
        assert r.json()["detail"]["code"] == "payload_too_large"
