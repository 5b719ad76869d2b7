"""Nothing lost, nothing doubled: workers and the API server are SIGKILLed mid-batch and restarted.

Real subprocesses, a real database (SQLite file or PostgreSQL), seeded kill points. Every request asks the
vision LLM (a loopback server in this process): the first call of a request whose query says "hold" is held
there (a later attempt answers at once), so a kill always lands on requests in flight while others finish
around it. Events, not the clock, decide when to kill.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.helpers import image_bytes, wait_until
from tests.processes import SightProcess, SightServer, sight_env
from tests.servers import FakeLLMServer

pytestmark = pytest.mark.slow  # starts `sight` subprocesses

REQUESTS = 200
FAST_LEASES = {
    "SIGHT_JOBS__LEASE_SECONDS": "2",
    "SIGHT_JOBS__HEARTBEAT_SECONDS": "0.5",
    "SIGHT_JOBS__POLL_SECONDS": "0.1",
    "SIGHT_JOBS__MAX_ATTEMPTS": "50",  # kills are not the requests' fault: never give up on them here
    "SIGHT_JOBS__BACKOFF_SECONDS": "0.1",
    "SIGHT_JOBS__CONCURRENCY": "4",
}


def _images() -> list[str]:
    """A few distinct small images (so blobs are shared, as in real batches)."""
    out = []
    for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"):
        buf = io.BytesIO()
        Image.open(io.BytesIO(image_bytes(name))).convert("RGB").save(buf, format="JPEG", quality=80)
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


class Client:
    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def submit(self) -> tuple[str, list[str]]:
        bid = self.http.post("/v1/batches", json={"name": "durability"}).json()["batch_id"]
        images = _images()
        requests = [{"batch_request_id": f"r{i:03d}", "batch_request": {"vision_predict": {
            "image_base64": images[i % len(images)], "filename": f"{i}.jpg", "is_yolo": True, "is_llm": True,
            "query": f"hold r{i:03d}" if i % 4 == 0 else "go"}}} for i in range(REQUESTS)]
        ids: list[str] = []
        for start in range(0, REQUESTS, 50):
            r = self.http.post(f"/v1/batches/{bid}/requests", json={"batch_requests": requests[start:start + 50]})
            assert r.status_code == 200, r.text
            ids += r.json()["batch_request_ids"]
        return bid, ids

    def state(self, bid: str) -> dict[str, Any]:
        return self.http.get(f"/v1/batches/{bid}").json()  # type: ignore[no-any-return]

    def wait_progress(self, bid: str, more_than: int, timeout: float = 60) -> int:
        def done() -> int:
            n = int(self.state(bid)["state"]["num_success"])
            return n if n > more_than else 0

        return wait_until(done, f"progress past {more_than}", timeout, poll=0.05)

    def wait_ended(self, bid: str, timeout: float = 150) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            batch = self.state(bid)
            return batch if batch["status"] == "ended" else None

        return wait_until(ended, f"batch {bid} ending", timeout, poll=0.2)

    def all_results(self, bid: str) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        token = None
        while True:
            params = {"limit": 37, **({"pagination_token": token} if token else {})}
            page = self.http.get(f"/v1/batches/{bid}/results", params=params).json()
            results += page["results"]
            token = page["pagination_token"]
            if token is None:
                return results


def _diagnose(database_url: str, processes: list[SightProcess]) -> str:
    """What the queue and the processes looked like, for a failure message."""
    import asyncio

    from sqlalchemy import func, select

    from sight.storage.db import open_db
    from sight.storage.tables import BatchRequest

    async def rows() -> list[tuple[object, ...]]:
        engine = open_db(database_url)
        try:
            async with engine.connect() as conn:
                r = BatchRequest
                query = (select(r.state, r.lease_owner, func.count(), func.max(r.attempts),
                                func.min(r.lease_expires_at), func.min(r.available_at))
                         .group_by(r.state, r.lease_owner))
                return [tuple(r) for r in (await conn.execute(query)).all()]
        finally:
            await engine.dispose()

    import shutil
    import subprocess
    import sys

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    import contextlib
    import signal

    running = [p for p in processes[-2:] if p.proc.poll() is None]
    before = {p.proc.pid: len(p.output()) for p in running}
    for p in running:
        p.proc.send_signal(signal.SIGUSR1)  # each worker prints its asyncio tasks ("--- name: coro") to its log
    with contextlib.suppress(AssertionError):  # a worker too wedged to print is itself a finding: go on
        wait_until(lambda: all("--- " in p.output()[before[p.proc.pid]:] for p in running),
                   "the workers' task dumps", timeout=10, poll=0.05)
    dumps = []
    for p in processes[-2:]:
        if p.proc.poll() is None and Path(spy).exists():
            dumps.append(subprocess.run([spy, "dump", "--pid", str(p.proc.pid)], capture_output=True, text=True,
                                        timeout=60).stdout)
    logs = "\n".join(f"--- pid {p.proc.pid} rc={p.proc.poll()}\n{p.output()[-6000:]}" for p in processes[-4:])
    logs += "\n".join(dumps)
    return f"queue: {asyncio.run(rows())}\n{logs}"


def _redone_requests(database_url: str) -> int:
    """How many requests were claimed more than once (their first worker died holding them)."""
    import asyncio

    from sqlalchemy import func, select

    from sight.storage.db import open_db
    from sight.storage.tables import BatchRequest

    async def count() -> int:
        engine = open_db(database_url)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(
                    select(func.count()).select_from(BatchRequest).where(BatchRequest.attempts > 1))).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(count())


def _check_exactly_once(client: Client, bid: str, ids: list[str]) -> None:
    batch = client.wait_ended(bid)
    assert batch["state"] == {"num_requests": REQUESTS, "num_pending": 0, "num_success": REQUESTS,
                              "num_error": 0, "num_cancelled": 0}, batch
    results = client.all_results(bid)
    got = [r["batch_request_id"] for r in results]
    assert len(got) == REQUESTS and sorted(got) == sorted(ids), "every request has exactly one result"
    for r in results:
        item = r["batch_result"]["response"]["vision_predict"]
        assert item["status"] == "done" and item["filename"] == f"{int(r['batch_request_id'][1:])}.jpg"
        assert item["llm"]["answer"]


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


@pytest.fixture
def llm(llm_server: FakeLLMServer) -> Iterator[FakeLLMServer]:
    """The loopback LLM: the first call of each request that asks it to "hold" waits for the test's gate (or
    for its caller to die); every other call answers at once."""
    llm_server.reset()
    calls: dict[str, int] = {}

    def mode(body: dict[str, Any]) -> str:
        text = FakeLLMServer.user_text(body)
        if "hold r" not in text:
            return "ok"
        request = text.split("hold ", 1)[1].split()[0]
        calls[request] = calls.get(request, 0) + 1
        return "gate" if calls[request] == 1 else "ok"

    llm_server.mode_for = mode
    yield llm_server
    llm_server.gate.set()


def _held(llm: FakeLLMServer) -> int:
    """Calls the LLM holds now: received in gate mode, not yet ended (answered, or hung up on)."""
    with llm.lock:
        return len({FakeLLMServer.user_text(r["body"]) for r in llm.requests if "hold r" in
                    FakeLLMServer.user_text(r["body"])}) - len(llm.held)


def _env(workdir: Path, database_url: str, llm: FakeLLMServer, **extra: str) -> dict[str, str]:
    return sight_env(workdir, database_url, SIGHT_LLM__BASE_URL=llm.url, SIGHT_LLM__MODEL="fake-vl",
                     SIGHT_LLM__DEADLINE="120", SIGHT_LLM__TIMEOUT="120", SIGHT_LLM__RETRIES="0",
                     **FAST_LEASES, **extra)


@pytest.mark.timeout(300)
def test_workers_killed_at_random_points_lose_and_double_nothing(workdir: Path, database_url: str,
                                                                llm: FakeLLMServer) -> None:
    rng = random.Random(1234)
    env = _env(workdir, database_url, llm, SIGHT_JOBS__RUN_IN_SERVER="false")
    server = SightServer(workdir, env)
    workers: list[SightProcess] = []
    try:
        key = server.first_key()
        assert key
        with Client(server.url, key) as client:
            bid, ids = client.submit()
            done = 0
            for _kill in range(4):
                pair = [SightProcess(["worker"], workdir, env) for _ in range(2)]
                workers += pair
                # A seeded kill point, counted, not timed: a few more requests done around the held ones, and
                # some held at the LLM, in flight in these workers.
                done = client.wait_progress(bid, done + rng.randint(0, 8))
                wait_until(lambda: _held(llm) >= 1, "a request of these workers in flight")
                for worker in pair:
                    worker.kill()
                wait_until(lambda: _held(llm) == 0, "the killed workers' calls hung up")
            llm.gate.set()  # from now on every call answers
            workers += [SightProcess(["worker"], workdir, env) for _ in range(2)]
            try:
                _check_exactly_once(client, bid, ids)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{_diagnose(database_url, workers)}") from exc
        assert _redone_requests(database_url) > 0, "some kills hit requests in flight, which were redone"
    finally:
        for worker in workers:
            worker.stop()
        server.stop()


@pytest.mark.timeout(300)
def test_api_server_restarted_mid_batch_finishes_it(workdir: Path, database_url: str, llm: FakeLLMServer) -> None:
    env = _env(workdir, database_url, llm)
    server = SightServer(workdir, env)
    try:
        key = server.first_key()
        assert key
        with Client(server.url, key) as client:
            bid, ids = client.submit()
            client.wait_progress(bid, 5)  # the server's 4 run slots fill with held calls after a dozen are done
            wait_until(lambda: _held(llm) >= 1, "requests in flight in the server")
        server.kill()
    finally:
        server.stop()
    llm.gate.set()
    restarted = SightServer(workdir, env)
    try:
        assert restarted.first_key() is None
        with Client(restarted.url, key) as client:
            assert client.state(bid)["state"]["num_success"] < REQUESTS, "the restart happened mid-batch"
            _check_exactly_once(client, bid, ids)
        assert _redone_requests(database_url) > 0, "the requests in flight at the kill were done again"
    finally:
        restarted.stop()
