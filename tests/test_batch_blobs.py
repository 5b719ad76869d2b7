"""Batch images and large batch results in the blob store, a folder or an S3 bucket: images written only for
accepted requests, results above ``inline_result_bytes`` written before their row commits; both removed once no
request references them.

Blob ages are set in the past (``os.utime`` on a file, the loopback S3 server's own record of an object);
nothing here sleeps.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sight.api.app import create_app
from sight.batches.runner import Runner
from sight.batches.store import result_bytes
from sight.config import BlobSettings, JobsSettings, Settings
from sight.models.registry import EngineRegistry
from sight.storage.blobs import BlobStore, FileBlobStore, open_blob_store
from sight.storage.blobs.base import blob_key
from tests.helpers import image_bytes

JOBS = JobsSettings(run_in_server=False, backoff_seconds=0.01, heartbeat_seconds=0.2, poll_seconds=0.05)
HOURS_AGO = 2 * 3600  # past the default one-hour grace period

both_stores = pytest.mark.parametrize("blob_settings", ["file", "s3"], indirect=True)

Age = Callable[..., None]


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
def settings(settings: Settings, blob_settings: BlobSettings) -> Settings:
    return settings.model_copy(update={"blobs": blob_settings})


@pytest.fixture
def client(settings: Settings, database_url: str, engines: EngineRegistry) -> Iterator[TestClient]:
    cfg = settings.model_copy(update={"database_url": database_url, "jobs": JOBS})
    with TestClient(create_app(cfg, engines=engines)) as c:
        yield c


@pytest.fixture
def blobs(client: TestClient, blob_settings: BlobSettings) -> BlobStore:
    store: BlobStore = client.app.state.services.blobs  # type: ignore[attr-defined]
    assert type(store).__name__ == ("S3BlobStore" if blob_settings.url else "FileBlobStore")
    return store


@pytest.fixture
def age(settings: Settings) -> Age:
    """``age(sha, ...)``: make these blobs look last written two hours ago."""
    url = settings.blobs.url

    def age_files(*shas: str) -> None:
        past = time.time() - HOURS_AGO
        for sha in shas:
            os.utime(settings.data_dir / "blobs" / blob_key(sha), (past, past))

    def age_objects(*shas: str) -> None:
        # S3 lets no client set LastModified: the loopback server's record of the object is changed instead.
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        assert url is not None
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        past = datetime.fromtimestamp(time.time() - HOURS_AGO, UTC).replace(tzinfo=None)  # moto keeps naive UTC
        for sha in shas:
            key = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_object(bucket, f"{prefix}/{blob_key(sha)}")
            assert key is not None, sha
            key.last_modified = past

    return age_objects if url else age_files


def _names(client: TestClient, blobs: BlobStore) -> set[str]:
    async def names() -> set[str]:
        return {blob.sha async for blob in blobs.listing()}

    return client.portal.call(names)


def _put(client: TestClient, blobs: BlobStore, name: str) -> str:
    return client.portal.call(blobs.put, image_bytes(name))


def _sweep(client: TestClient) -> None:
    client.portal.call(client.app.state.services.sweeper.sweep)  # type: ignore[attr-defined]


async def _expire(client: TestClient, batch_id: str) -> None:
    from sqlalchemy import update

    from sight.storage.tables import Batch

    async with client.app.state.services.db.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(update(Batch).where(Batch.id == batch_id).values(expire_at=Batch.created_at))


@both_stores
def test_rejected_adds_write_no_blob(client: TestClient, blobs: BlobStore) -> None:
    team = Team(client, "a")
    bid = team.create()
    assert team.add(bid, [_req("coffee.png", "x")]).status_code == 200
    before = _names(client, blobs)
    assert before == {_sha(image_bytes("coffee.png"))}
    fresh = [_req("astronaut.png"), _req("chelsea.png"), _req("rocket.jpg")]
    for _ in range(3):  # the id is already in the batch: 409, and none of the new images is stored
        r = team.add(bid, [*fresh, _req("bus.jpg", "x")])
        assert r.status_code == 409, r.text
    bad = {"batch_request": {"vision_predict": {"is_yolo": True}}}  # neither image_url nor image_base64
    assert team.add(bid, [*fresh, bad]).status_code == 400
    client.post(f"/v1/batches/{bid}:cancel", headers=team.headers)
    assert team.add(bid, fresh).status_code == 409
    assert Team(client, "b").add(bid, fresh).status_code == 404
    assert _names(client, blobs) == before


@both_stores
def test_sweep_removes_unreferenced_blobs_only_past_the_grace_period(
    client: TestClient, blobs: BlobStore, age: Age
) -> None:
    team = Team(client, "a")
    bid = team.create()
    assert team.add(bid, [_req("coffee.png")]).status_code == 200
    # A crash mid-add: blobs stored, no row. One long ago, one just now (an add still in flight, say).
    _put(client, blobs, "astronaut.png")
    _put(client, blobs, "chelsea.png")
    age(_sha(image_bytes("astronaut.png")), _sha(image_bytes("coffee.png")))

    _sweep(client)

    names = _names(client, blobs)
    assert _sha(image_bytes("astronaut.png")) not in names, "an old orphan is removed"
    assert _sha(image_bytes("chelsea.png")) in names, "a blob newer than the grace period stays"
    assert _sha(image_bytes("coffee.png")) in names, "a referenced blob stays, however old"
    _sweep(client)
    assert _sha(image_bytes("coffee.png")) in _names(client, blobs)


@both_stores
def test_storing_an_old_blob_again_protects_it_from_the_sweep(client: TestClient, blobs: BlobStore, age: Age) -> None:
    # An add in flight whose image is already stored (an old orphan) must not lose it before its rows land.
    sha = _put(client, blobs, "astronaut.png")
    age(sha)
    _put(client, blobs, "astronaut.png")
    _sweep(client)
    assert sha in _names(client, blobs)
    assert client.portal.call(blobs.get, sha) == image_bytes("astronaut.png")


@both_stores
def test_blobs_shared_across_batches_and_teams_outlive_one_batch(
    client: TestClient, blobs: BlobStore, age: Age
) -> None:
    a, b = Team(client, "a"), Team(client, "b")
    first, second, third = a.create(), a.create(), b.create()
    assert a.add(first, [_req("coffee.png"), _req("astronaut.png")]).status_code == 200
    assert a.add(second, [_req("coffee.png")]).status_code == 200
    assert b.add(third, [_req("astronaut.png")]).status_code == 200
    assert a.add(first, [_req("chelsea.png")]).status_code == 200
    age(*(_sha(image_bytes(name)) for name in ("coffee.png", "astronaut.png", "chelsea.png")))

    client.portal.call(_expire, client, first)
    _sweep(client)
    names = _names(client, blobs)
    assert _sha(image_bytes("chelsea.png")) not in names, "only the expired batch used it"
    assert {_sha(image_bytes("coffee.png")), _sha(image_bytes("astronaut.png"))} <= names

    client.portal.call(_expire, client, second)
    _sweep(client)
    names = _names(client, blobs)
    assert _sha(image_bytes("coffee.png")) not in names
    assert _sha(image_bytes("astronaut.png")) in names, "team b's batch still uses it"


@both_stores
@pytest.mark.anyio
async def test_a_blob_stored_while_the_sweep_decides_is_kept(settings: Settings, age: Age) -> None:
    # The sweep lists old blobs, asks the database, then removes: an add may store the same image meanwhile.
    store = open_blob_store(settings)
    sha = await store.put(image_bytes("coffee.png"))
    age(sha)
    cutoff = time.time() - 3600
    assert [b.sha async for b in store.listing() if b.modified < cutoff] == [sha]
    await store.put(image_bytes("coffee.png"))  # an add in flight, its rows not committed yet
    assert await store.remove_untouched([sha], cutoff) == 0
    assert await store.get(sha) == image_bytes("coffee.png")
    age(sha)
    assert await store.remove_untouched([sha], cutoff) == 1
    assert [b async for b in store.listing()] == []
    assert await store.put(image_bytes("coffee.png")) == sha and await store.get(sha) == image_bytes("coffee.png")


def test_sweep_removes_old_leftovers_of_crashed_writes(client: TestClient, blobs: BlobStore) -> None:
    # Only the file store has them: a put writes a temp file and renames it; S3 makes an object appear whole.
    assert isinstance(blobs, FileBlobStore)
    shard = blobs.root / "ab"
    shard.mkdir(parents=True)
    for name in (".tmp-crashed", ".gone-crashed", ".tmp-in-flight"):
        (shard / name).write_bytes(b"half an image")
    past = time.time() - HOURS_AGO
    for name in (".tmp-crashed", ".gone-crashed"):
        os.utime(shard / name, (past, past))
    _sweep(client)
    assert [p.name for p in shard.iterdir()] == [".tmp-in-flight"]


# -- results -------------------------------------------------------------------------------------------------


def _ocr(name: str, request_id: str) -> dict[str, Any]:
    vp = {"image_base64": base64.b64encode(image_bytes(name)).decode(), "is_ocr": True}
    return {"batch_request_id": request_id, "batch_request": {"vision_predict": vp}}


def _drain(client: TestClient, inline_result_bytes: int = JOBS.inline_result_bytes) -> None:
    """Work until idle, with a runner that keeps results up to ``inline_result_bytes`` in the database."""
    services = client.app.state.services  # type: ignore[attr-defined]
    jobs = JOBS.model_copy(update={"inline_result_bytes": inline_result_bytes})
    client.portal.call(Runner(services.queue, services.sweeper, services.pipeline, services.blobs, jobs).run_until_idle)


def _rows(client: TestClient, batch_id: str) -> dict[str, tuple[dict[str, Any] | None, str | None]]:
    """Each request's stored (result, result_sha)."""
    from sqlalchemy import select

    from sight.storage.tables import Batch, BatchRequest

    async def read() -> dict[str, tuple[dict[str, Any] | None, str | None]]:
        async with client.app.state.services.db.connect() as conn:  # type: ignore[attr-defined]
            rows = await conn.execute(
                select(BatchRequest.request_id, BatchRequest.result, BatchRequest.result_sha)
                .join(Batch, Batch.seq == BatchRequest.batch_seq).where(Batch.id == batch_id))
            return {rid: (result, sha) for rid, result, sha in rows}

    return client.portal.call(read)


def _results(team: Team, batch_id: str) -> dict[str, dict[str, Any]]:
    r = team.client.get(f"/v1/batches/{batch_id}/results", headers=team.headers)
    assert r.status_code == 200, r.text
    return {entry["batch_request_id"]: entry for entry in r.json()["results"]}


def _untimed(entry: dict[str, Any]) -> dict[str, Any]:
    """A result entry without the timings, which every run measures anew."""
    predicted = entry["batch_result"]["response"]["vision_predict"]
    return {**entry, "batch_result": {"response": {"vision_predict": {**predicted, "timings_ms": None}}}}


@both_stores
def test_results_over_the_threshold_go_to_the_blob_store_and_read_back_as_inline_ones(
    client: TestClient, blobs: BlobStore
) -> None:
    team = Team(client, "a")
    inline, split = team.create(), team.create()
    requests = [_req("coffee.png", "photo"), _ocr("page.png", "page")]
    assert team.add(inline, requests).status_code == 200
    _drain(client)  # the default threshold: these results are small enough to stay in the database
    rows = _rows(client, inline)
    assert all(result is not None and sha is None for result, sha in rows.values()), rows
    sizes = {rid: len(result_bytes(result)) for rid, (result, _sha) in rows.items() if result is not None}
    assert 3 * sizes["photo"] < sizes["page"], sizes

    assert team.add(split, requests).status_code == 200
    _drain(client, inline_result_bytes=(sizes["photo"] + sizes["page"]) // 2)  # far from both (timings vary)
    rows = _rows(client, split)
    assert rows["photo"][0] is not None and rows["photo"][1] is None, "under the threshold a result stays inline"
    result, sha = rows["page"]
    assert result is None and sha is not None, "over it the row keeps only the blob's name"
    assert client.portal.call(blobs.exists, sha)

    first, second = _results(team, inline), _results(team, split)
    assert second["page"]["batch_result"]["response"]["vision_predict"] == json.loads(
        client.portal.call(blobs.get, sha)), "the stored result, as stored"
    assert {rid: _untimed(e) for rid, e in second.items()} == {rid: _untimed(e) for rid, e in first.items()}
    assert second["page"]["batch_result"]["response"]["vision_predict"]["ocr"]["lines"]


@both_stores
def test_a_missing_result_blob_is_an_error_entry_not_a_failed_page(client: TestClient, blobs: BlobStore) -> None:
    team = Team(client, "a")
    bid = team.create()
    assert team.add(bid, [_req("astronaut.png", "kept"), _req("coffee.png", "lost")]).status_code == 200
    _drain(client, inline_result_bytes=0)  # every result to the blob store
    rows = _rows(client, bid)
    assert rows["kept"][1] and rows["lost"][1] and rows["kept"][1] != rows["lost"][1]
    client.portal.call(blobs.delete, rows["lost"][1])

    results = _results(team, bid)
    assert results["kept"]["batch_result"]["response"]["vision_predict"]["yolo"]["detections"]
    assert results["lost"]["error"] == {"code": "not_found", "message": "the stored result of this request is gone"}
    assert results["lost"]["batch_result"] is None and results["lost"]["error_message"]


def test_an_unreadable_result_blob_is_that_rows_error(client: TestClient, blobs: BlobStore) -> None:
    """A stored result that is there but cannot be read (here: not JSON) fails its row, not the page."""
    assert isinstance(blobs, FileBlobStore)
    team = Team(client, "a")
    bid = team.create()
    assert team.add(bid, [_req("astronaut.png", "kept"), _req("coffee.png", "bad")]).status_code == 200
    _drain(client, inline_result_bytes=0)
    blobs._path(_rows(client, bid)["bad"][1]).write_bytes(b"\x00 not json")
    results = _results(team, bid)
    assert results["kept"]["batch_result"]["response"]["vision_predict"]["yolo"]["detections"]
    assert results["bad"]["error"]["code"] == "upstream_error" and results["bad"]["batch_result"] is None


@both_stores
def test_sweep_keeps_result_blobs_while_any_row_names_them_as_result_or_image(
    client: TestClient, blobs: BlobStore, age: Age
) -> None:
    a, b = Team(client, "a"), Team(client, "b")
    results = a.create()
    assert a.add(results, [_req("coffee.png", "x")]).status_code == 200
    _drain(client, inline_result_bytes=0)
    (_result, sha), = _rows(client, results).values()
    assert sha is not None
    # Team b stores the very same bytes as an image: one blob, named by a result and by an image.
    images = b.create()
    shared = base64.b64encode(client.portal.call(blobs.get, sha)).decode()
    r = b.add(images, [{"batch_request": {"vision_predict": {"image_base64": shared, "is_yolo": True}}}])
    assert r.status_code == 200
    # A completion that stored its result and then crashed (or lost its lease) before its commit.
    orphan = client.portal.call(blobs.put, result_bytes({"status": "done", "crashed": True}))
    age(sha, orphan, _sha(image_bytes("coffee.png")))

    _sweep(client)
    names = _names(client, blobs)
    assert sha in names and orphan not in names, "a referenced result stays, an orphaned one goes"
    assert _results(a, results)["x"]["batch_result"]

    client.portal.call(_expire, client, results)
    _sweep(client)
    names = _names(client, blobs)
    assert _sha(image_bytes("coffee.png")) not in names, "the purged batch's image goes"
    assert sha in names, "team b's image is the same blob"

    client.portal.call(_expire, client, images)
    _sweep(client)
    assert sha not in _names(client, blobs), "no row names it any more: it goes with the last batch"


@both_stores
def test_purging_a_batch_removes_its_result_blobs(client: TestClient, blobs: BlobStore, age: Age) -> None:
    team = Team(client, "a")
    bid = team.create()
    assert team.add(bid, [_req("astronaut.png", "x"), _ocr("serial-label.png", "y")]).status_code == 200
    _drain(client, inline_result_bytes=0)
    shas = {sha for _result, sha in _rows(client, bid).values() if sha}
    assert len(shas) == 2 and shas <= _names(client, blobs)
    _sweep(client)  # the first sweep of a process lists the whole store; later ones only purge, within the grace
    age(*shas, _sha(image_bytes("astronaut.png")), _sha(image_bytes("serial-label.png")))

    client.portal.call(_expire, client, bid)
    _sweep(client)
    assert _names(client, blobs) == set(), "results and images of the purged batch are gone"
    assert _rows(client, bid) == {"x": (None, None), "y": (None, None)}


def test_sweep_lists_the_whole_store_once_per_grace_period(client: TestClient, blobs: BlobStore, age: Age) -> None:
    store = client.app.state.services.sweeper  # type: ignore[attr-defined]
    started = datetime.now(UTC)
    store.clock = lambda: started
    _sweep(client)
    orphan = _put(client, blobs, "astronaut.png")  # an add that crashed after storing its image
    age(orphan)
    _sweep(client)
    assert orphan in _names(client, blobs), "not listed again within the grace period"
    store.clock = lambda: started + timedelta(seconds=store.settings.jobs.blob_grace_seconds)
    _sweep(client)
    assert orphan not in _names(client, blobs), "listed once the grace period has passed"
