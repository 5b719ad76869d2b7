"""Authentication: every bad key reads the same, keys are compared in constant time, none leaks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from sight.errors import AuthenticationError
from tests.helpers import image_bytes, key_parts, v1_request

BATCH = "/api/v1/inference/predict/batch"


def test_bad_keys_all_answer_the_same_401(client: TestClient, api_key: str, app) -> None:  # type: ignore[no-untyped-def]
    store = app.state.services.keys
    expired, _ = client.portal.call(lambda: store.create_key("a", expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    revoked, info = client.portal.call(store.create_key, "a")
    client.portal.call(store.revoke, info.id)
    key_id, secret = key_parts(api_key)
    bad = {
        "garbage": "hello",
        "wrong format": "Bearer",
        "unknown id": f"sk-sight-key_aaaaaaaaaaaa-{secret}",
        "wrong secret": f"sk-sight-{key_id}-{'x' * len(secret)}",
        "expired": expired,
        "revoked": revoked,
        "sql": "sk-sight-key_aaaaaaaaaaaa-' OR 1=1 --aaaaaaaaaaaa",
    }
    one = v1_request([("a.png", image_bytes("coffee.png"))], [{"is_yolo": True}])
    bodies = set()
    for label, key in bad.items():
        r = client.post(BATCH, headers={"Authorization": f"Bearer {key}"}, **one)
        assert r.status_code == 401, label
        assert r.headers["www-authenticate"] == "Bearer"
        bodies.add(r.text)
        assert client.get("/v1/batches", headers={"Authorization": key}).status_code == 401, label
    assert len(bodies) == 1, "every failure reads the same"
    missing = client.get("/v1/batches")
    assert missing.status_code == 401 and missing.json()["detail"]["code"] == "unauthorized"


def test_unknown_and_wrong_keys_cost_the_same(client: TestClient, api_key: str, app,  # type: ignore[no-untyped-def]
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown key id and a wrong secret take the same path: one indexed lookup, one hash, one constant-time
    comparison of two 64-character digests. Counted, not timed: a shortcut on either side (say, returning
    before hashing for unknown ids) shows as a different count, whatever else the machine is doing."""
    import hmac

    from sqlalchemy import event

    import sight.storage.keys as keys

    store = app.state.services.keys
    key_id, secret = key_parts(api_key)
    unknown = f"sk-sight-key_zzzzzzzzzzzz-{secret}"
    wrong = f"sk-sight-{key_id}-{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    calls: list[str] = []
    real_hash, real_compare = keys._hash, hmac.compare_digest

    def counted_hash(text: str) -> str:
        calls.append("hash")
        return real_hash(text)

    def counted_compare(a: str, b: str) -> bool:
        calls.append(f"compare {len(a)}x{len(b)}")
        return real_compare(a, b)

    def counted_query(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "api_keys" in statement:  # the key lookup (the server's own background queries run meanwhile)
            calls.append("query")

    monkeypatch.setattr(keys, "_hash", counted_hash)
    monkeypatch.setattr(keys.hmac, "compare_digest", counted_compare)
    sync_engine = app.state.services.db.sync_engine
    event.listen(sync_engine, "before_cursor_execute", counted_query)
    try:
        paths = []
        for key in (unknown, wrong):
            calls.clear()
            with pytest.raises(AuthenticationError):
                client.portal.call(store.verify, key)
            paths.append(sorted(calls))
    finally:
        event.remove(sync_engine, "before_cursor_execute", counted_query)
    assert paths[0] == paths[1] == ["compare 64x64", "hash", "query"], paths


def test_keys_are_stored_hashed(client: TestClient, api_key: str, app) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from sight.storage.tables import ApiKey

    async def rows() -> list[str]:
        async with app.state.services.db.connect() as conn:
            return [r.secret_hash for r in (await conn.execute(select(ApiKey))).all()]

    stored = client.portal.call(rows)
    _, secret = key_parts(api_key)
    assert stored and all(len(h) == 64 and secret not in h for h in stored)


def test_secrets_holding_dashes_verify(client: TestClient, app, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """token_urlsafe may put '-' anywhere in a secret, first character included; such keys must work."""
    import sight.storage.keys as keys

    store = app.state.services.keys
    for secret in ("-q9saEVSEg6fEnwy0kLXDivq5ECadoz_ORX9KGJSDk4", "abc--def-ghi-jkl-mno-pqr-", "--------------------"):
        monkeypatch.setattr(keys.secrets, "token_urlsafe", lambda _n, s=secret: s)
        key, info = client.portal.call(store.create_key, "dashes")
        assert key_parts(key) == (info.id, secret)
        principal = client.portal.call(store.verify, key)
        assert principal.key_id == info.id
        r = client.get("/v1/batches", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
