"""Real HTTP servers on loopback for tests: an OpenAI-compatible vision LLM, Ollama, an image host, uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import uvicorn

MAX_SLEEP = 10.0  # no handler ever stays slow longer, so a test can never hang on a server
GATE_TIMEOUT = 60.0  # a gate the test never opens: the held answer fails (504), after half the per-test timeout


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _hold(self, seconds: float, gate: threading.Event | None = None) -> str:
        """Hold the answer: until ``gate`` opens ("released"), the client hangs up ("hangup", as a client whose
        own timeout ran out does), or ``seconds`` pass ("timeout")."""
        deadline = time.monotonic() + seconds
        watch = [self.connection]  # the request is read in full: the client can only send its hang-up now
        while not (gate is not None and gate.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            # Without a gate only the socket can end the hold; with one, look at the gate again every 50 ms.
            readable, _, _ = select.select(watch, [], [], left if gate is None else min(left, 0.05))
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        return "hangup"
                except OSError:
                    return "hangup"
                watch = []  # a pipelined request, not a hang-up: wait on the gate and the clock alone
        return "released"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up early are part of the tests


class _Background:
    """A ThreadingHTTPServer on 127.0.0.1, started and stopped as a context manager."""

    handler: type[BaseHTTPRequestHandler]

    host = "127.0.0.1"
    port = 0

    def __enter__(self) -> _Background:
        self.httpd = _Server((self.host, self.port), self.handler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def origin(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return self.origin


class _LLMHandler(_Quiet):
    def _json(self) -> Any:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            return json.loads(raw)
        except ValueError:
            self._send(400, b'{"error": "bad json"}')
            return None

    def do_GET(self) -> None:  # noqa: N802
        owner: FakeLLMServer = self.server.owner  # type: ignore[attr-defined]
        with owner.lock:
            owner.hits.append(f"GET {self.path}")
        if self.path != "/v1/models":
            self._send(404, b'{"error": "not found"}')
            return
        listing = {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "test"} for m in owner.models]}
        self._send(200, json.dumps(listing).encode())

    def do_POST(self) -> None:  # noqa: N802
        owner: FakeLLMServer = self.server.owner  # type: ignore[attr-defined]
        with owner.lock:
            owner.hits.append(f"POST {self.path}")
        body = self._json()
        if body is None:
            return
        if self.path != "/v1/chat/completions":
            self._send(404, b'{"error": "not found"}')
            return
        if not owner.serves(str(body.get("model"))):
            self._send(404, json.dumps({"error": {"message": f"model {body.get('model')!r} not found"}}).encode())
            return
        with owner.lock:
            owner.requests.append({"body": body, "headers": dict(self.headers)})
            mode = owner.mode_for(body)
            gate = owner.gate
        if mode in {"slow", "gate"}:
            # slow: an upstream that answers after ``delay``, or never, to a client whose timeout is shorter.
            # gate: the answer waits for the test (``gate.set()``); a gate never opened fails the call.
            held = self._hold(min(owner.delay, MAX_SLEEP)) if mode == "slow" else self._hold(GATE_TIMEOUT, gate)
            with owner.lock:
                owner.held.append(held)
            if held == "hangup":
                return
            if mode == "gate" and held == "timeout":
                self._send(504, b'{"error": {"message": "the test never opened the gate"}}')
                return
        elif mode == "429":
            self._send(429, b'{"error": {"message": "rate limited"}}', headers={"Retry-After": "0"})
            return
        elif mode == "500":
            self._send(500, b'{"error": {"message": "boom"}}')
            return
        elif mode == "400":  # a request the backend will not take (its context is too long, say)
            self._send(400, b'{"error": {"message": "this request exceeds the context length"}}')
            return
        elif mode == "malformed":
            self._send(200, b'{"choices": [{"mess')
            return
        elif mode == "schema_required" and body.get("response_format", {}).get("type") != "json_schema":
            # A backend that enforces structured output: a body without a json_schema response_format is refused.
            self._send(400, b'{"error": {"message": "this test server needs response_format json_schema"}}')
            return
        elif mode == "schema_refused" and "response_format" in body:
            # A backend that knows no response_format (as older llama.cpp and some hosted APIs answer).
            self._send(400, b'{"error": {"message": "Unrecognized request argument supplied: response_format"}}')
            return
        text = owner.answer(body) if owner.answer is not None else owner.reply(body)
        finish = "stop"
        if mode == "huge":  # a backend that ignores max_tokens: 10 MB of answer
            text = ("SN-4X7Q-2291-B é " * 600_000)[:10_000_000]
        elif mode == "cut":  # a backend that stopped at max_tokens
            finish = "length"
        payload = {
            "id": "chatcmpl-test", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107},
        }
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._send(200, json.dumps(payload).encode())


class FakeLLMServer(_Background):
    """Speaks OpenAI chat completions and model listing (``models``); records what it receives (``hits``: every
    method and path; ``requests``: chat completions); can be slow, held at a gate, 429, 500 or malformed.
    ``held`` says how each slow or gated answer ended: "released", "hangup" (the client went away) or "timeout".

    >>> llm.mode = "gate"     # chat completions wait ...
    >>> llm.gate.set()        # ... until the test lets them answer
    """

    handler = _LLMHandler

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        if gate := getattr(self, "gate", None):
            gate.set()  # a call an earlier test left held answers now, not at GATE_TIMEOUT
        self.requests: list[dict[str, Any]] = []
        self.hits: list[str] = []
        self.held: list[str] = []
        self.models = ["fake-vl"]
        self.mode = "ok"
        self.delay = 0.0
        self.gate = threading.Event()
        self.mode_for: Callable[[dict[str, Any]], str] = lambda _body: self.mode
        # The answer's text, in place of ``reply``'s (a test's structured answers, invalid JSON and the like).
        self.answer: Callable[[dict[str, Any]], str] | None = None

    @property
    def url(self) -> str:
        return self.origin + "/v1"

    def serves(self, model: str) -> bool:
        return True  # any name: tests route several catalog models to one server

    @staticmethod
    def user_text(body: dict[str, Any]) -> str:
        content = body["messages"][-1]["content"]
        if isinstance(content, str):
            return content
        return " ".join(p.get("text", "") for p in content if p.get("type") == "text")

    @staticmethod
    def ocr_lines(body: dict[str, Any]) -> list[str]:
        """The numbered OCR lines Sight put in a structured request's prompt, without their numbers."""
        text = FakeLLMServer.user_text(body)
        return [line.split("] ", 1)[1] for line in text.splitlines() if line.startswith("[") and "] " in line]

    @staticmethod
    def image_urls(body: dict[str, Any]) -> list[str]:
        content = body["messages"][-1]["content"]
        if isinstance(content, str):
            return []
        return [p["image_url"]["url"] for p in content if p.get("type") == "image_url"]

    def reply(self, body: dict[str, Any]) -> str:
        text = self.user_text(body)
        if "Answers per image" in text:
            return "CONDENSED: " + " | ".join(line for line in text.splitlines() if line.startswith("- "))
        if "SN-4X7Q-2291-B" in text.replace(" ", ""):
            return "The serial number is SN-4X7Q-2291-B."
        return "I see an image."


class _OllamaHandler(_LLMHandler):
    def do_GET(self) -> None:  # noqa: N802
        owner: FakeOllamaServer = self.server.owner  # type: ignore[attr-defined]
        if self.path != "/api/tags":
            super().do_GET()
            return
        with owner.lock:
            owner.hits.append(f"GET {self.path}")
            names = list(owner.catalog)
        models = [{"name": n, "model": n, "modified_at": "2025-05-01T10:00:00Z", "size": 3_200_000_000,
                   "digest": "0" * 64, "details": {"format": "gguf", "family": n.split(":")[0]}} for n in names]
        self._send(200, json.dumps({"models": models}).encode())

    def do_POST(self) -> None:  # noqa: N802
        owner: FakeOllamaServer = self.server.owner  # type: ignore[attr-defined]
        if self.path != "/api/show":
            super().do_POST()
            return
        with owner.lock:
            owner.hits.append(f"POST {self.path}")
        body = self._json()
        if body is None:
            return
        with owner.lock:
            capabilities = owner.catalog.get(str(body.get("model")))
        if capabilities is None:
            self._send(404, json.dumps({"error": f"model '{body.get('model')}' not found"}).encode())
            return
        show = {"modelfile": "", "parameters": "", "template": "{{ .Prompt }}",
                "details": {"format": "gguf", "families": ["qwen2"]}, "model_info": {},
                "capabilities": capabilities}
        self._send(200, json.dumps(show).encode())


class FakeOllamaServer(FakeLLMServer):
    """Speaks Ollama: ``/api/tags`` and ``/api/show`` over ``catalog`` (model name -> capabilities), and its
    OpenAI-compatible ``/v1`` (chat completions answer only the models it has). ``url`` is Ollama's root, as
    ``SIGHT_LLM__OLLAMA_URL`` takes it. Give ``port`` to start it where a client already looks."""

    handler = _OllamaHandler

    def __init__(self, catalog: dict[str, list[str]] | None = None, port: int = 0) -> None:
        super().__init__()
        self.port = port
        self.catalog = dict(catalog if catalog is not None else {"qwen2.5vl:3b": ["completion", "vision"]})

    @property
    def url(self) -> str:
        return self.origin

    def serves(self, model: str) -> bool:
        with self.lock:
            return model in self.catalog

    def __enter__(self) -> FakeOllamaServer:
        super().__enter__()
        return self


class _ImageHandler(_Quiet):
    def do_GET(self) -> None:  # noqa: N802
        owner: ImageServer = self.server.owner  # type: ignore[attr-defined]
        with owner.lock:
            owner.hits.append(self.path)
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path == "/redirect":
            target = query["to"][0]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if url.path.startswith("/slow/") and self._hold(min(float(query.get("s", ["1"])[0]), MAX_SLEEP)) == "hangup":
            return  # the client gave up first (its fetch deadline): nobody is left to answer
        name = url.path.rsplit("/", 1)[-1]
        path = owner.root / name
        if not name or not path.is_file():
            self._send(404, b"not found", "text/plain")
            return
        self._send(200, path.read_bytes(), "image/png" if name.endswith(".png") else "image/jpeg")


class ImageServer(_Background):
    """Serves files of a folder; ``/redirect?to=URL`` redirects, ``/slow/NAME?s=1`` answers after ``s`` seconds
    (or not at all, if the client hangs up first)."""

    handler = _ImageHandler

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = root
        self.host, self.port = host, port
        self.lock = threading.Lock()
        self.hits: list[str] = []


class _UvicornServer(uvicorn.Server):
    """uvicorn, saying when its start-up is over (listening, or failed: then ``started`` stays False)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.ready.set()


class LiveServer:
    """Serves an app with uvicorn on a free loopback port in a background thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = _UvicornServer(self.config)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve())
        finally:
            self.server.ready.set()  # it failed before its start-up: __enter__ stops waiting and says so
            self.loop.close()

    def __enter__(self) -> LiveServer:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.server.ready.wait(60) or not self.server.started:
            raise RuntimeError("uvicorn did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``await fn(*args)`` on the server's event loop (e.g. to create a key)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(fn(*args), self.loop).result(timeout=30)


class _RawServer:
    """A bare TCP listener on loopback; subclasses decide what a connection gets."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.on_connection(conn)

    def on_connection(self, conn: socket.socket) -> None:
        conn.close()

    def __enter__(self) -> _RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


class Canary(_RawServer):
    """A TCP listener that only counts connections: any count above zero means a request got through."""

    connections = 0

    def on_connection(self, conn: socket.socket) -> None:
        self.connections += 1
        conn.close()

    def __enter__(self) -> Canary:
        super().__enter__()
        return self


class HostileServer(_RawServer):
    """Raw HTTP over sockets, misbehaving on purpose: /trickle, /short, /long, /forever, /html. The endless
    ones go on for ``duration`` seconds (or until the server stops)."""

    duration = MAX_SLEEP

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on_connection(self, conn: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + self.duration
        with contextlib.suppress(OSError), conn:
            path = conn.recv(65536).split(b" ", 2)[1].decode()
            head = "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
            if path == "/trickle":
                conn.sendall((head + "Content-Length: 100000\r\n\r\n").encode())
                while time.monotonic() < deadline and not self._stop.is_set():
                    conn.sendall(b"\xff")
                    time.sleep(0.1)
            elif path == "/short":  # promises more than it sends
                conn.sendall((head + "Content-Length: 5000\r\n\r\n").encode() + b"\xff\xd8" * 10)
            elif path == "/long":  # sends more than it promised
                conn.sendall((head + "Content-Length: 10\r\n\r\n").encode() + b"\xff" * 100_000)
            elif path == "/forever":
                conn.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
                chunk = b"%x\r\n" % 65536 + b"\0" * 65536 + b"\r\n"
                while time.monotonic() < deadline and not self._stop.is_set():
                    conn.sendall(chunk)
            elif path == "/html":
                body = b"<html><body>not a picture</body></html>"
                conn.sendall((head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body)

    def __enter__(self) -> HostileServer:
        super().__enter__()
        return self
