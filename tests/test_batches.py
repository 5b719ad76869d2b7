"""Batches API on SQLite and PostgreSQL: lifecycle, teams, idempotency, cancel, retries, paging, expiry."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sight.api.app import create_app
from sight.config import BlobSettings, ImageSettings, JobsSettings, Settings
from sight.models.registry import EngineRegistry
from sight.schemas import BatchRequestIn
from sight.storage.blobs import open_blob_store
from tests.helpers import image_bytes, key_parts, wait_until
from tests.servers import FakeLLMServer

FAST_JOBS = JobsSettings(run_in_server=False, backoff_seconds=0.01, heartbeat_seconds=0.2, poll_seconds=0.05,
                         max_attempts=3)
# Batch images in a folder and in an S3 bucket (a real S3 server on loopback); other tests use the folder.
both_stores = pytest.mark.parametrize("blob_settings", ["file", "s3"], indirect=True)


def _b64(name: str) -> str:
    return base64.b64encode(image_bytes(name)).decode()


def _vp(**fields: Any) -> dict[str, Any]:
    return {"batch_request": {"vision_predict": fields}}


class Api:
    """A team's view of the Batches API through the test client."""

    def __init__(self, client: TestClient, key: str) -> None:
        self.client, self.headers = client, {"Authorization": f"Bearer {key}"}
        self.key_id, _ = key_parts(key)

    def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.client.post(path, json=json, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(path, params={k: v for k, v in params.items() if v is not None},
                               headers=self.headers)

    def create(self, name: str = "b") -> dict[str, Any]:
        r = self.post("/v1/batches", {"name": name})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def add(self, batch_id: str, requests: list[dict[str, Any]]) -> list[str]:
        r = self.post(f"/v1/batches/{batch_id}/requests", {"batch_requests": requests})
        assert r.status_code == 200, r.text
        return r.json()["batch_request_ids"]  # type: ignore[no-any-return]

    def batch(self, batch_id: str) -> dict[str, Any]:
        r = self.get(f"/v1/batches/{batch_id}")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def results(self, batch_id: str, **params: Any) -> dict[str, Any]:
        r = self.get(f"/v1/batches/{batch_id}/results", **params)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture
def settings(settings: Settings, blob_settings: BlobSettings) -> Settings:
    return settings.model_copy(update={"blobs": blob_settings})


def _stored(client: TestClient, settings: Settings) -> list[bytes]:
    """The images in the store the settings name, read through a store of its own."""
    async def read() -> list[bytes]:
        store = open_blob_store(settings)
        return [await store.get(blob.sha) async for blob in store.listing()]

    return client.portal.call(read)


def _settings(settings: Settings, database_url: str, **jobs: Any) -> Settings:
    return settings.model_copy(update={"database_url": database_url, "jobs": FAST_JOBS.model_copy(update=jobs)})


@pytest.fixture
def client(settings: Settings, database_url: str, engines: EngineRegistry) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(settings, database_url), engines=engines)) as c:
        yield c


def _api(client: TestClient, team: str) -> Api:
    key, _ = client.portal.call(client.app.state.services.keys.create_key, team)  # type: ignore[attr-defined]
    return Api(client, key)


class _Clock:
    """A clock the test moves forward, for leases, deadlines and expiry without sleeping."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _drain(client: TestClient) -> None:
    runner = client.app.state.services.new_runner()  # type: ignore[attr-defined]
    client.portal.call(runner.run_until_idle)


@both_stores
def test_batch_lifecycle_and_result_shapes(client: TestClient) -> None:
    api = _api(client, "a")
    created = api.create("serials")
    assert created["status"] == "processing" and created["name"] == "serials"
    assert created["create_api_key_id"] == api.key_id
    assert created["state"] == {"num_requests": 0, "num_pending": 0, "num_success": 0, "num_error": 0,
                                "num_cancelled": 0}
    assert created["create_time"].endswith("Z") and created["expire_time"] > created["create_time"]
    bid = created["batch_id"]
    ids = api.add(bid, [
        {"batch_request_id": "face", **_vp(image_base64=_b64("astronaut.png"), filename="a.png", is_yolo=True)},
        {"batch_request_id": "private", **_vp(image_url="http://127.0.0.1/x.png", is_yolo=True)},
        _vp(image_base64=_b64("serial-label.png"), is_ocr=True),
    ])
    assert ids[:2] == ["face", "private"] and ids[2]
    listed = api.get(f"/v1/batches/{bid}/requests").json()
    assert [m["state"] for m in listed["batch_request_metadata"]] == ["pending"] * 3
    assert listed["batch_request_metadata"][0]["model"] == "nudenet"
    assert listed["batch_request_metadata"][0]["endpoint"] == "vision_predict"

    _drain(client)

    batch = api.batch(bid)
    assert batch["status"] == "ended"
    assert batch["state"] == {"num_requests": 3, "num_pending": 0, "num_success": 2, "num_error": 1,
                              "num_cancelled": 0}
    results = api.results(bid)
    assert results["pagination_token"] is None
    by_id = {r["batch_request_id"]: r for r in results["results"]}
    face = by_id["face"]["batch_result"]["response"]["vision_predict"]
    assert face["status"] == "done" and face["filename"] == "a.png"
    assert face["yolo"]["detections"][0]["name"] == "FACE_FEMALE"
    assert by_id["private"]["error"]["code"] == "url_not_allowed"
    assert by_id["private"]["error_message"]
    assert "SN-4X7Q-2291-B" in by_id[ids[2]]["batch_result"]["response"]["vision_predict"]["ocr"]["text"]
    meta = api.get(f"/v1/batches/{bid}/requests").json()["batch_request_metadata"]
    assert [m["state"] for m in meta] == ["succeeded", "failed", "succeeded"]
    assert all(m["finish_time"] for m in meta)


@both_stores
def test_same_image_is_stored_once(client: TestClient, settings: Settings) -> None:
    api = _api(client, "a")
    bid = api.create()["batch_id"]
    api.add(bid, [_vp(image_base64=_b64("coffee.png"), is_yolo=True)] * 3)
    assert _stored(client, settings) == [image_bytes("coffee.png")]


def test_other_teams_get_404_on_every_batch_route(client: TestClient) -> None:
    a, b = _api(client, "a"), _api(client, "b")
    bid = a.create()["batch_id"]
    a.add(bid, [_vp(image_base64=_b64("coffee.png"), is_yolo=True)])
    for r in (b.get(f"/v1/batches/{bid}"), b.get(f"/v1/batches/{bid}/requests"),
              b.get(f"/v1/batches/{bid}/results"), b.post(f"/v1/batches/{bid}:cancel"),
              b.post(f"/v1/batches/{bid}/requests", {"batch_requests": [_vp(image_url="http://e.com/a.png")]})):
        assert r.status_code == 404, r.text
        assert r.json()["detail"]["code"] == "not_found"
    assert b.get("/v1/batches").json()["batches"] == []
    assert [x["batch_id"] for x in a.get("/v1/batches").json()["batches"]] == [bid]
    assert a.batch(bid)["state"]["num_requests"] == 1, "b's add did not land in a's batch"
    assert client.get(f"/v1/batches/{bid}").status_code == 401


def test_duplicate_request_ids_answer_409(client: TestClient) -> None:
    api = _api(client, "a")
    bid = api.create()["batch_id"]
    req = {"batch_request_id": "x", **_vp(image_base64=_b64("coffee.png"), is_yolo=True)}
    assert api.post(f"/v1/batches/{bid}/requests", {"batch_requests": [req, req]}).status_code == 409
    api.add(bid, [req])
    r = api.post(f"/v1/batches/{bid}/requests", {"batch_requests": [req]})
    assert r.status_code == 409 and r.json()["detail"]["code"] == "conflict"
    assert api.batch(bid)["state"]["num_requests"] == 1


def test_idempotency_key_returns_the_same_batch(client: TestClient) -> None:
    api = _api(client, "a")
    headers = {"Idempotency-Key": "run-42"}
    first = api.post("/v1/batches", {"name": "n"}, headers=headers).json()
    again = api.post("/v1/batches", {"name": "n"}, headers=headers).json()
    assert first["batch_id"] == again["batch_id"]
    assert api.post("/v1/batches", {"name": "other"}, headers=headers).status_code == 409
    assert len(api.get("/v1/batches").json()["batches"]) == 1
    other_team = _api(client, "b").post("/v1/batches", {"name": "n"}, headers=headers).json()
    assert other_team["batch_id"] != first["batch_id"]


@both_stores
def test_cancel_keeps_results_refuses_adds_and_is_idempotent(client: TestClient) -> None:
    api = _api(client, "a")
    bid = api.create()["batch_id"]
    api.add(bid, [_vp(image_base64=_b64("astronaut.png"), is_yolo=True)] * 2)
    _drain(client)
    api.add(bid, [_vp(image_base64=_b64("coffee.png"), is_yolo=True)] * 3)
    cancelled = api.post(f"/v1/batches/{bid}:cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["cancel_time"]
    assert cancelled["state"]["num_success"] == 2 and cancelled["state"]["num_cancelled"] == 3
    _drain(client)
    assert api.batch(bid)["state"]["num_cancelled"] == 3, "cancelled requests are never run"
    assert len(api.results(bid)["results"]) == 2
    r = api.post(f"/v1/batches/{bid}/requests", {"batch_requests": [_vp(image_url="http://e.com/a.png")]})
    assert r.status_code == 409
    again = api.post(f"/v1/batches/{bid}:cancel").json()
    assert again["cancel_time"] == cancelled["cancel_time"] and again["state"] == cancelled["state"]


def test_cancel_of_an_ended_batch_changes_nothing(client: TestClient) -> None:
    api = _api(client, "a")
    bid = api.create()["batch_id"]
    api.add(bid, [_vp(image_base64=_b64("coffee.png"), is_yolo=True)] * 4)
    _drain(client)
    ended = api.batch(bid)
    assert ended["status"] == "ended" and ended["state"]["num_success"] == 4
    for _ in range(2):
        r = api.post(f"/v1/batches/{bid}:cancel")
        assert r.status_code == 200 and r.json() == ended
    assert api.batch(bid) == ended
    assert len(api.results(bid)["results"]) == 4


def test_cancel_twice_while_processing_gives_the_same_answer(client: TestClient) -> None:
    api = _api(client, "a")
    bid = api.create()["batch_id"]
    api.add(bid, [_vp(image_base64=_b64("coffee.png"), is_yolo=True)] * 3)
    first = api.post(f"/v1/batches/{bid}:cancel").json()
    assert first["status"] == "cancelled" and first["state"]["num_cancelled"] == 3
    assert api.post(f"/v1/batches/{bid}:cancel").json() == first
    _drain(client)
    assert api.batch(bid) == first


def test_cancel_interrupts_an_in_flight_llm_call(
    settings: Settings, database_url: str, engines: EngineRegistry, llm: FakeLLMServer
) -> None:
    llm.mode = "gate"  # the LLM holds its answer until the test opens the gate: only a cancel ends the call
    cfg = _settings(settings, database_url, run_in_server=True, concurrency=1)
    cfg = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"timeout": 60.0, "retries": 0})})
    with TestClient(create_app(cfg, engines=engines)) as client:
        api = _api(client, "a")
        runner = client.app.state.services.runner  # type: ignore[attr-defined]
        bid = api.create()["batch_id"]
        api.add(bid, [_vp(image_base64=_b64("coffee.png"), is_llm=True, query="q")] * 3)
        wait_until(lambda: llm.requests, "the runner's first LLM call")
        state = api.post(f"/v1/batches/{bid}:cancel").json()["state"]
        assert state["num_cancelled"] == 3 and state["num_pending"] == 0
        wait_until(lambda: runner.in_flight == 0, "the cancel interrupting the in-flight request")
        assert not llm.gate.is_set(), "the call ended while the LLM still held its answer: the cancel ended it"
        llm.gate.set()
        _drain(client)
        assert len(llm.requests) == 1, "no further LLM calls after cancel"
        assert api.results(bid)["results"] == [], "the interrupted call's result is not recorded"


def test_transient_failures_retry_with_backoff_then_fail(client: TestClient, llm: FakeLLMServer) -> None:
    api = _api(client, "a")
    bid = api.create()["batch_id"]
    llm.mode = "500"
    api.add(bid, [{"batch_request_id": "doomed", **_vp(image_base64=_b64("coffee.png"), is_llm=True)}])
    _drain(client)
    (result,) = api.results(bid)["results"]
    assert result["error"]["code"] == "llm_error"
    assert len(llm.requests) == 3 * 2, "3 attempts, each with the LLM client's own retry"

    llm.reset()
    calls = {"n": 0}

    def flaky(_body: dict[str, Any]) -> str:
        calls["n"] += 1
        return "500" if calls["n"] <= 2 else "ok"  # the whole first attempt fails

    llm.mode_for = flaky
    api.add(bid, [{"batch_request_id": "recovers", **_vp(image_base64=_b64("coffee.png"), is_llm=True)}])
    _drain(client)
    by_id = {r["batch_request_id"]: r for r in api.results(bid)["results"]}
    assert by_id["recovers"]["batch_result"]["response"]["vision_predict"]["llm"]["answer"]


def test_permanent_errors_are_not_retried(client: TestClient, llm: FakeLLMServer) -> None:
    api = _api(client, "a")
    bid = api.create()["batch_id"]
    api.add(bid, [_vp(image_base64=base64.b64encode(b"not an image").decode(), is_yolo=True)])
    _drain(client)
    meta = api.get(f"/v1/batches/{bid}/requests").json()["batch_request_metadata"][0]
    assert meta["state"] == "failed"
    rows = client.portal.call(_attempts, client)
    assert rows == [1]


@both_stores
def test_a_failed_request_keeps_the_stages_that_worked(client: TestClient) -> None:
    """Detection fails (an unknown model: no retry), OCR read the label: the result keeps the text beside the
    error, inline and in the blob store alike."""
    api = _api(client, "a")
    bid = api.create()["batch_id"]
    api.add(bid, [{"batch_request_id": "label", "batch_request": {"vision_predict": {
        "image_base64": _b64("serial-label.png"), "is_yolo": True, "yolo_model": "ghost", "is_ocr": True}}}])
    _drain(client)
    (entry,) = api.results(bid)["results"]
    assert entry["error"]["code"] == "model_not_found" and entry["error_message"]
    item = entry["batch_result"]["response"]["vision_predict"]
    assert item["status"] == "error" and "SN-4X7Q-2291-B" in item["ocr"]["text"] and item["yolo"] is None


async def _attempts(client: TestClient) -> list[int]:
    from sqlalchemy import select

    from sight.storage.tables import BatchRequest

    async with client.app.state.services.db.connect() as conn:  # type: ignore[attr-defined]
        return list((await conn.execute(select(BatchRequest.attempts))).scalars())


def test_paging_is_stable_while_results_arrive(
    settings: Settings, database_url: str, engines: EngineRegistry
) -> None:
    cfg = _settings(settings, database_url, run_in_server=True, concurrency=2)
    with TestClient(create_app(cfg, engines=engines)) as client:
        api = _api(client, "a")
        bid = api.create()["batch_id"]
        ids = api.add(bid, [_vp(image_base64=_b64("coffee.png"), is_yolo=True)] * 40)
        seen: list[str] = []

        def next_page(token: str | None) -> dict[str, Any] | None:
            page = api.results(bid, limit=4, pagination_token=token)
            return page if page["results"] or page["pagination_token"] is None else None  # None: none new yet

        token = None
        while True:
            page = wait_until(partial(next_page, token), "more results to page through", poll=0.02)
            if len(page["results"]) == 4:
                assert api.results(bid, limit=4, pagination_token=token) == page, "a full page reads the same"
            seen.extend(r["batch_request_id"] for r in page["results"])
            if page["pagination_token"] is None:
                break
            token = page["pagination_token"]
        assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
        listed: list[str] = []
        token = None
        while True:
            page = api.get(f"/v1/batches/{bid}/requests", limit=7, pagination_token=token).json()
            listed.extend(m["batch_request_id"] for m in page["batch_request_metadata"])
            token = page["pagination_token"]
            if token is None:
                break
        assert listed == ids, "requests list in insertion order, each once"


def test_a_page_of_batches_costs_one_counts_query_whatever_its_size(client: TestClient) -> None:
    """Listing batches counts their requests in one query per page, not one per batch (counted, not timed)."""
    from sqlalchemy import event

    api = _api(client, "pages")
    for i in range(6):
        api.add(api.create(f"b{i}")["batch_id"], [{"batch_request": {"vision_predict": {
            "image_base64": _b64("coffee.png"), "is_yolo": True}}}])
    counts: list[str] = []

    def counted(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        text = statement.lower()
        if "count(" in text and "group by" in text and "batch_requests" in text:
            counts.append(statement)

    sync_engine = client.app.state.services.db.sync_engine  # type: ignore[attr-defined]
    event.listen(sync_engine, "before_cursor_execute", counted)
    try:
        per_page = {}
        for limit in (2, 6):
            counts.clear()
            page = api.get("/v1/batches", limit=limit).json()
            assert len(page["batches"]) == limit and all(b["state"]["num_requests"] == 1 for b in page["batches"])
            per_page[limit] = len(counts)
    finally:
        event.remove(sync_engine, "before_cursor_execute", counted)
    assert per_page == {2: 1, 6: 1}, per_page


def test_limits_and_tokens_are_validated(client: TestClient) -> None:
    api = _api(client, "a")
    bid = api.create()["batch_id"]
    assert api.get("/v1/batches", limit=101).status_code == 400
    assert api.get(f"/v1/batches/{bid}/requests", limit=1001).status_code == 400
    assert api.get(f"/v1/batches/{bid}/results", pagination_token="garbage!").status_code == 400
    other = api.create()["batch_id"]
    api.add(other, [_vp(image_base64=_b64("coffee.png"), is_yolo=True)] * 3)
    token = api.get(f"/v1/batches/{other}/requests", limit=1).json()["pagination_token"]
    assert api.get(f"/v1/batches/{bid}/requests", pagination_token=token).status_code == 400
    for _ in range(3):
        api.create()
    page = api.get("/v1/batches", limit=2).json()
    rest = api.get("/v1/batches", limit=100, pagination_token=page["pagination_token"]).json()
    assert len(page["batches"]) == 2 and len(rest["batches"]) == 3 and rest["pagination_token"] is None


def test_a_request_with_neither_or_both_image_fields_is_the_adds_400(client: TestClient) -> None:
    api = _api(client, "a")
    bid = api.create()["batch_id"]
    for image in ({}, {"image_url": "https://example.com/a.png", "image_base64": _b64("coffee.png")}):
        r = api.post(f"/v1/batches/{bid}/requests", {"batch_requests": [
            _vp(image_base64=_b64("coffee.png"), is_yolo=True), {"batch_request": {"vision_predict": {
                **image, "is_yolo": True}}}]})
        assert r.status_code == 400, r.text
        assert r.json()["detail"] == {"code": "invalid_input", "message":
                                      "batch_requests[1]: give exactly one of image_url and image_base64"}
    assert api.batch(bid)["state"]["num_requests"] == 0, "a refused add adds nothing"


def test_pagination_tokens_with_out_of_range_cursors_are_400s(client: TestClient) -> None:
    """Well-formed tokens for the right listing whose cursor no database column can hold: 400, never a 500."""
    from sight.batches import paging

    api = _api(client, "a")
    bid = api.create()["batch_id"]
    seq = client.portal.call(_batch_seq, client, bid)
    for cursor in (10**30, -(2**63) - 1, -1, 2**63):
        for path, kind, scope in (("/v1/batches", "batches", 0), (f"/v1/batches/{bid}/requests", "requests", seq),
                                  (f"/v1/batches/{bid}/results", "results", seq)):
            r = api.get(path, pagination_token=paging.encode(kind, scope, cursor))
            assert r.status_code == 400, (path, cursor, r.text)
            assert r.json()["detail"] == {"code": "invalid_input", "message": "invalid pagination_token"}


async def _batch_seq(client: TestClient, batch_id: str) -> int:
    from sqlalchemy import select

    from sight.storage.tables import Batch

    async with client.app.state.services.db.connect() as conn:  # type: ignore[attr-defined]
        return int((await conn.execute(select(Batch.seq).where(Batch.id == batch_id))).scalar_one())


def test_oversized_request_answers_413(settings: Settings, database_url: str, engines: EngineRegistry) -> None:
    cfg = _settings(settings, database_url).model_copy(update={"images": ImageSettings(max_bytes=50_000)})
    with TestClient(create_app(cfg, engines=engines)) as client:
        api = _api(client, "a")
        bid = api.create()["batch_id"]
        r = api.post(f"/v1/batches/{bid}/requests", {"batch_requests": [_vp(image_base64=_b64("coffee.png"))]})
        assert r.status_code == 413 and r.json()["detail"]["code"] == "payload_too_large"


@both_stores
def test_expiry_removes_results_and_deadline_cancels_pending(
    settings: Settings, database_url: str, engines: EngineRegistry
) -> None:
    cfg = _settings(settings, database_url, retention_hours=1.5 / 3600, deadline_hours=0.8 / 3600,
                    blob_grace_seconds=0)  # images seconds old may go (tests/test_batch_blobs.py: the grace)
    with TestClient(create_app(cfg, engines=engines)) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        clock = _Clock()
        # time moves when the test says so
        services.batches.clock = services.queue.clock = services.sweeper.clock = clock
        api = _api(client, "a")
        bid = api.create()["batch_id"]
        api.add(bid, [_vp(image_base64=_b64("astronaut.png"), is_yolo=True)])
        _drain(client)
        api.add(bid, [_vp(image_base64=_b64("coffee.png"), is_yolo=True)])
        assert len(api.results(bid)["results"]) == 1
        clock.advance(0.9)  # past the processing deadline, before expiry
        client.portal.call(client.app.state.services.sweeper.sweep)  # type: ignore[attr-defined]
        state = api.batch(bid)["state"]
        assert state["num_success"] == 1 and state["num_cancelled"] == 1
        clock.advance(0.8)  # past expiry
        assert api.batch(bid)["status"] == "expired"
        assert api.results(bid)["results"] == []
        r = api.post(f"/v1/batches/{bid}/requests", {"batch_requests": [_vp(image_url="http://e.com/a.png")]})
        assert r.status_code == 409
        assert len(_stored(client, cfg)) == 2, "the images stay until the batch is purged"
        cancelled, purged = client.portal.call(client.app.state.services.sweeper.sweep)  # type: ignore[attr-defined]
        assert purged == 1
        assert _stored(client, cfg) == [], "expired images are deleted from the store"


def test_only_the_lease_holder_can_complete(client: TestClient) -> None:
    api = _api(client, "a")
    bid = api.create()["batch_id"]
    api.add(bid, [{"batch_request_id": "only", **_vp(image_base64=_b64("coffee.png"), is_yolo=True)}])
    queue = client.app.state.services.queue  # type: ignore[attr-defined]
    queue.clock = clock = _Clock()
    (first,) = client.portal.call(queue.claim, "w1", 10)
    assert first.attempts == 1
    clock.advance(queue.settings.lease_seconds + 1)  # w1's lease lapses (w1 stalled, say)
    (second,) = client.portal.call(queue.claim, "w2", 10)
    assert second.seq == first.seq and second.attempts == 2, "attempts are counted at claim time"
    assert client.portal.call(queue.complete, "w1", first.seq, "succeeded", {"from": "w1"}, None) is False
    assert client.portal.call(queue.heartbeat, "w1", [first.seq]) == set()
    assert client.portal.call(queue.complete, "w2", second.seq, "failed", None,
                              {"code": "internal", "message": "w2"}) is True
    assert client.portal.call(queue.complete, "w2", second.seq, "succeeded", {"again": 1}, None) is False
    (result,) = api.results(bid)["results"]
    assert result["error"]["message"] == "w2"


class _HeldHeartbeat:
    """The real queue, whose heartbeat answers only when released: work gets claimed meanwhile. ``claimed`` and
    ``completed`` are set once the runner has claimed work and recorded an outcome."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.settings = inner, inner.settings
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()
        self.answered = asyncio.Event()
        self.claimed = asyncio.Event()
        self.completed = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def heartbeat(self, worker: str, seqs: list[int]) -> set[int]:
        held = await self.inner.heartbeat(worker, seqs)
        self.waiting.set()
        await self.release.wait()
        self.answered.set()  # the runner judges this answer before any other task runs again
        return held  # type: ignore[no-any-return]

    async def claim(self, *args: Any, **kwargs: Any) -> list[Any]:
        jobs = await self.inner.claim(*args, **kwargs)
        if jobs:
            self.claimed.set()
        return jobs  # type: ignore[no-any-return]

    async def complete(self, *args: Any, **kwargs: Any) -> bool:
        done = await self.inner.complete(*args, **kwargs)
        self.completed.set()
        return done  # type: ignore[no-any-return]


class _BlobsAfterHeartbeat:
    """The real blob store, whose reads wait for the held heartbeat's answer: the claimed work is still under
    way when that stale answer is judged."""

    def __init__(self, inner: Any, queue: _HeldHeartbeat) -> None:
        self.inner, self.queue = inner, queue

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get(self, *args: Any, **kwargs: Any) -> bytes:
        await self.queue.answered.wait()
        return await self.inner.get(*args, **kwargs)  # type: ignore[no-any-return]


async def _until(event: asyncio.Event, what: str) -> None:
    """Wait for ``event``; fail, saying ``what`` never came, after a generous bound."""
    try:
        async with asyncio.timeout(60):
            await event.wait()
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within 60s") from None


async def _states(services: Any) -> list[str]:
    from sqlalchemy import select

    from sight.storage.tables import BatchRequest

    async with services.db.connect() as conn:
        return list((await conn.execute(select(BatchRequest.state))).scalars())


def test_a_heartbeat_never_cancels_work_claimed_while_it_was_in_flight(client: TestClient) -> None:
    from sight.batches.runner import Runner

    api = _api(client, "a")
    bid = api.create()["batch_id"]
    services = client.app.state.services  # type: ignore[attr-defined]

    async def scenario() -> None:
        queue = _HeldHeartbeat(services.queue)
        runner = Runner(queue, services.sweeper, services.pipeline,  # type: ignore[arg-type]
                        _BlobsAfterHeartbeat(services.blobs, queue),  # type: ignore[arg-type]
                        services.settings.jobs.model_copy(update={"heartbeat_seconds": 0.01}))
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        await queue.waiting.wait()  # the first heartbeat asked about nothing and now holds its answer
        reqs = [BatchRequestIn.model_validate(_vp(image_base64=_b64("coffee.png"), is_yolo=True))]
        team = (await services.keys.verify(api.headers["Authorization"][7:])).team_id
        await services.batches.add_requests(team, bid, reqs)
        runner.wake()
        await _until(queue.claimed, "the runner claiming the request")
        assert await _states(services) == ["running"]
        queue.release.set()  # the stale answer (without the new request) arrives now
        await _until(queue.completed, "the runner recording the request's outcome")
        assert (await services.batches.get(team, bid)).status == "ended"
        stop.set()
        await task

    client.portal.call(scenario)
    assert api.batch(bid)["state"]["num_success"] == 1
