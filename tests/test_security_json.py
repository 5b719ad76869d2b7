"""JSON nested without bound: a 400 with its code, never a RecursionError, a 500 or a dropped connection; and the
v1 form's key is checked before its metadata is decoded."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.helpers import image_bytes
from tests.servers import LiveServer

BATCH = "/api/v1/inference/predict/batch"
DEEP_METADATA = ["[" * 200_000, '{"a":' * 100_000]


@pytest.mark.parametrize("metadata", DEEP_METADATA, ids=["arrays", "objects"])
def test_deep_v1_metadata_is_a_400(client: TestClient, api_key: str, metadata: str) -> None:
    r = client.post(BATCH, data={"api_key": api_key, "metadata": [metadata]},
                    files=[("files", ("c.png", image_bytes("coffee.png")))])
    assert r.status_code == 400, r.text
    assert r.json()["detail"]["code"] == "invalid_input"
    assert "metadata[0]: JSON nested deeper than 64 levels" in r.json()["detail"]["message"]


def test_v1_metadata_is_not_decoded_before_the_key_is_checked(client: TestClient, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    from sight.api import bodies

    decoded: list[str] = []
    real = bodies.loads
    monkeypatch.setattr(bodies, "loads", lambda data, depth: decoded.append("metadata") or real(data, depth))
    r = client.post(BATCH, data={"api_key": "sk-sight-wrong", "metadata": [DEEP_METADATA[0]]},
                    files=[("files", ("c.png", image_bytes("coffee.png")))])
    assert r.status_code == 401 and decoded == []


def test_deep_deployment_and_v2_bodies_are_400s_and_keep_the_connection(live: LiveServer, api_key: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=60) as http:
        r = http.post("/v1/detect/latest", content=f'{{"data": {deep}}}')
        assert r.status_code == 400, r.text
        assert r.json()["error"] == r.json()["detail"]["message"] == "JSON nested deeper than 64 levels"
        assert r.headers.get("connection") != "close"
        r = http.post("/api/v1/inference/predict/batch/v2", content=f'{{"data": {deep}}}')
        assert r.status_code == 400, r.text
        assert r.json()["detail"]["code"] == "invalid_input"
        assert http.get("/healthz").status_code == 200, "the same client goes on"


def test_depth_check_counts_brackets_outside_strings_only() -> None:
    from sight.api import bodies

    assert not bodies.too_deep(json.dumps({"a": "[" * 1000, "b": ["]" * 5, {"c": 1}]}), 3)
    assert bodies.too_deep("[[[[1]]]]", 3) and not bodies.too_deep(b"[[[1]]]", 3)
    assert not bodies.too_deep(json.dumps(["\\\"[[[[[[", "x"]), 1)
