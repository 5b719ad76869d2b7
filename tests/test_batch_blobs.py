"""Batch images on disk: written only for accepted requests, removed once no request references them.

Blob ages are set with ``os.utime``; nothing here sleeps.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sight.api.app import create_app
from sight.config import JobsSettings, Settings
from sight.engines.registry import EngineRegistry
from sight.jobs.blobs import BlobStore
from tests.helpers import image_bytes

JOBS = JobsSettings(run_in_server=False, backoff_seconds=0.01, heartbeat_seconds=0.2, poll_seconds=0.05)
HOURS_AGO = 2 * 3600  # past the default one-hour grace period


def _req(name: str, request_id: str | None = None) -> dict[str, Any]:
    vp = {"image_base64": base64.b64encode(image_bytes(name)).decode(), "is_yolo": True}
    return {**({"batch_request_id": request_id} if request_id else {}), "batch_request": {"vision_predict": vp}}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Team:
    def __init__(self, client: TestClient, name: str) -> None:
        key, _ = client.portal.call(client.app.state.services.keys.create_key, name)  # type: ignore[attr-defined]
        self.client, self.headers = client, {"Authorization": f"Bearer {key}"}

    def create(self) -> str:
        return str(self.client.post("/v1/batches", json={"name": "b"}, headers=self.headers).json()["batch_id"])

    def add(self, batch_id: str, requests: list[dict[str, Any]]) -> Any:
        return self.client.post(f"/v1/batches/{batch_id}/requests", json={"batch_requests": requests},
                                headers=self.headers)


@pytest.fixture
def client(settings: Settings, database_url: str, engines: EngineRegistry) -> Iterator[TestClient]:
    cfg = settings.model_copy(update={"database_url": database_url, "jobs": JOBS})
    with TestClient(create_app(cfg, engines=engines)) as c:
        yield c


@pytest.fixture
def blobs(client: TestClient) -> BlobStore:
    return client.app.state.services.blobs  # type: ignore[attr-defined,no-any-return]


def _files(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*") if p.is_file()}


def _age(blobs: BlobStore, *names: str) -> None:
    past = time.time() - HOURS_AGO
    for name in names:
        os.utime(blobs.root / _sha(image_bytes(name))[:2] / _sha(image_bytes(name)), (past, past))


def _sweep(client: TestClient) -> None:
    client.portal.call(client.app.state.services.batches.sweep)  # type: ignore[attr-defined]


async def _expire(client: TestClient, batch_id: str) -> None:
    from sqlalchemy import update

    from sight.storage.tables import Batch

    async with client.app.state.services.db.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(update(Batch).where(Batch.id == batch_id).values(expire_at=Batch.created_at))


def test_rejected_adds_write_no_blob(client: TestClient, blobs: BlobStore) -> None:
    team = Team(client, "a")
    bid = team.create()
    assert team.add(bid, [_req("coffee.png", "x")]).status_code == 200
    before = _files(blobs.root)
    assert len(before) == 1
    fresh = [_req("astronaut.png"), _req("chelsea.png"), _req("rocket.jpg")]
    for _ in range(3):  # the id is already in the batch: 409, and none of the new images lands on disk
        r = team.add(bid, [*fresh, _req("bus.jpg", "x")])
        assert r.status_code == 409, r.text
    bad = {"batch_request": {"vision_predict": {"is_yolo": True}}}  # neither image_url nor image_base64
    assert team.add(bid, [*fresh, bad]).status_code == 400
    client.post(f"/v1/batches/{bid}:cancel", headers=team.headers)
    assert team.add(bid, fresh).status_code == 409
    assert Team(client, "b").add(bid, fresh).status_code == 404
    assert _files(blobs.root) == before


def test_sweep_removes_unreferenced_blobs_only_past_the_grace_period(client: TestClient, blobs: BlobStore) -> None:
    team = Team(client, "a")
    bid = team.create()
    assert team.add(bid, [_req("coffee.png")]).status_code == 200
    # A crash mid-add: blobs on disk, no row. One long ago, one just now (an add still in flight, say).
    blobs.put(image_bytes("astronaut.png"))
    blobs.put(image_bytes("chelsea.png"))
    (blobs.root / "ab").mkdir(exist_ok=True)
    (blobs.root / "ab" / ".tmp-crashed").write_bytes(b"half an image")
    _age(blobs, "astronaut.png", "coffee.png")
    past = time.time() - HOURS_AGO
    os.utime(blobs.root / "ab" / ".tmp-crashed", (past, past))

    _sweep(client)

    names = _files(blobs.root)
    assert _sha(image_bytes("astronaut.png")) not in names, "an old orphan is removed"
    assert _sha(image_bytes("chelsea.png")) in names, "a blob newer than the grace period stays"
    assert _sha(image_bytes("coffee.png")) in names, "a referenced blob stays, however old"
    assert ".tmp-crashed" not in names, "an old half-written file is removed"
    _sweep(client)
    assert _sha(image_bytes("coffee.png")) in _files(blobs.root)


def test_storing_an_old_blob_again_protects_it_from_the_sweep(client: TestClient, blobs: BlobStore) -> None:
    # An add in flight whose image is already on disk (an old orphan) must not lose it before its rows land.
    blobs.put(image_bytes("astronaut.png"))
    _age(blobs, "astronaut.png")
    blobs.put(image_bytes("astronaut.png"))
    _sweep(client)
    assert _sha(image_bytes("astronaut.png")) in _files(blobs.root)


def test_blobs_shared_across_batches_and_teams_outlive_one_batch(client: TestClient, blobs: BlobStore) -> None:
    a, b = Team(client, "a"), Team(client, "b")
    first, second, third = a.create(), a.create(), b.create()
    assert a.add(first, [_req("coffee.png"), _req("astronaut.png")]).status_code == 200
    assert a.add(second, [_req("coffee.png")]).status_code == 200
    assert b.add(third, [_req("astronaut.png")]).status_code == 200
    assert a.add(first, [_req("chelsea.png")]).status_code == 200
    _age(blobs, "coffee.png", "astronaut.png", "chelsea.png")

    client.portal.call(_expire, client, first)
    _sweep(client)
    names = _files(blobs.root)
    assert _sha(image_bytes("chelsea.png")) not in names, "only the expired batch used it"
    assert {_sha(image_bytes("coffee.png")), _sha(image_bytes("astronaut.png"))} <= names

    client.portal.call(_expire, client, second)
    _sweep(client)
    names = _files(blobs.root)
    assert _sha(image_bytes("coffee.png")) not in names
    assert _sha(image_bytes("astronaut.png")) in names, "team b's batch still uses it"


def test_a_blob_stored_while_the_sweep_decides_is_kept(tmp_path: Path) -> None:
    # The sweep lists old blobs, asks the database, then removes: an add may store the same image meanwhile.
    store = BlobStore(tmp_path)
    sha = store.put(image_bytes("coffee.png"))
    _age(store, "coffee.png")
    cutoff = time.time() - 3600
    assert store.untouched_since(cutoff) == [sha]
    store.put(image_bytes("coffee.png"))  # an add in flight, its rows not committed yet
    assert store.remove_untouched([sha], cutoff) == 0
    assert store.get(sha) == image_bytes("coffee.png")
    _age(store, "coffee.png")
    assert store.remove_untouched([sha], cutoff) == 1
    assert _files(tmp_path) == set()
    assert store.put(image_bytes("coffee.png")) == sha and store.get(sha) == image_bytes("coffee.png")
