"""A real HTTP server on loopback that serves model files the way a release host or the Hugging Face Hub does,
and misbehaves on request: 404, a dropped connection, a short body, a gate that holds every body back."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from tests.servers import MAX_SLEEP, _Background, _Quiet

Mode = Literal["ok", "404", "dropped", "short"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _FileHandler(_Quiet):
    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        owner: ModelFileServer = self.server.owner  # type: ignore[attr-defined]
        path = urlparse(self.path).path
        # Hugging Face layout: /{owner}/{repo}/resolve/{revision}/{file}
        if "/resolve/" in path:
            path = "/" + path.split("/resolve/", 1)[1].split("/", 1)[1]
        with owner.lock:
            if not head:
                owner.hits.append(path)
            body = owner.files.get(path)
            mode = owner.modes.get(path, "ok")
        if body is None or mode == "404":
            self._send(404, b"not found", "text/plain")
            return
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}
        if head:
            self.send_response(200)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            return
        owner.started.set()
        if owner.gate is not None:
            owner.gate.wait(MAX_SLEEP)
        with contextlib.suppress(OSError):
            if mode == "ok":
                self._send(200, body, "application/octet-stream", headers)
            elif mode == "dropped":  # promises the whole file, sends half, hangs up
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(2)
            elif mode == "short":  # no length promised: the body simply ends early
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True


class ModelFileServer(_Background):
    """Serves ``files`` (URL path -> bytes) at ``/NAME`` and, for ``huggingface_hub``, at
    ``/{owner}/{repo}/resolve/{revision}/NAME``. ``hits`` records every GET."""

    handler = _FileHandler

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.modes: dict[str, Mode] = {}
        self.lock = threading.Lock()
        self.hits: list[str] = []
        self.gate: threading.Event | None = None  # when set here, each GET waits for it before its body
        self.started = threading.Event()  # a GET reached the body

    def __enter__(self) -> ModelFileServer:
        super().__enter__()
        return self

    def source(self, name: str, sha256: str | None = None) -> str:
        """The pinned URL source of a served file (its real hash unless ``sha256`` is given)."""
        return f"{self.url}/{name}#sha256={sha256 or hashlib.sha256(self.files['/' + name]).hexdigest()}"

    def gets(self, name: str) -> int:
        with self.lock:
            return self.hits.count("/" + name)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
