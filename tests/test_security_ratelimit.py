"""Per-team quotas in images with Retry-After, in memory and on a real Redis (Debian's redis-server)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from sight.api.app import create_app
from sight.config import RateLimitSettings, Settings
from sight.models.registry import EngineRegistry
from tests.helpers import image_bytes, v1_request, wait_until
from tests.processes import free_port

BATCH = "/api/v1/inference/predict/batch"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: apt-get install redis-server (as .ci/run does)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                          text=True).stdout.strip() == "PONG", "redis answering", 20, 0.05)
        yield f"async+redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=["memory", "redis"])
def storage_uri(request: pytest.FixtureRequest) -> str:
    return "async+memory://" if request.param == "memory" else str(request.getfixturevalue("redis_url"))


def test_quota_counts_images_and_answers_429_per_team(
    settings: Settings, engines: EngineRegistry, storage_uri: str
) -> None:
    cfg = settings.model_copy(update={"rate_limit": RateLimitSettings(images_per_minute=5, storage_uri=storage_uri)})
    with TestClient(create_app(cfg, engines=engines)) as client:
        store = client.app.state.services.keys  # type: ignore[attr-defined]
        key_a, _ = client.portal.call(store.create_key, "team-a")
        key_b, _ = client.portal.call(store.create_key, "team-b")
        three = v1_request([("c.png", image_bytes("coffee.png"))] * 3, [{"is_yolo": True}] * 3)
        two = v1_request([("c.png", image_bytes("coffee.png"))] * 2, [{"is_yolo": True}] * 2)
        auth_a = {"Authorization": f"Bearer {key_a}"}
        assert client.post(BATCH, headers=auth_a, **three).status_code == 200
        limited = client.post(BATCH, headers=auth_a, **three)
        assert limited.status_code == 429, "3 + 3 images is over 5 a minute"
        assert limited.json()["detail"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert client.post(BATCH, headers=auth_a, **two).status_code == 200, "3 + 2 fits"
        other = client.post(BATCH, headers={"Authorization": f"Bearer {key_b}"}, **three)
        assert other.status_code == 200, "team b has its own quota: team a's use does not count against it"
        # A deployment is resolved before the quota is asked: an unknown one is a 404, quota or not.
        assert client.post("/v1/double/latest", json={"data": 1}, headers=auth_a).status_code == 404
        assert client.post("/v1/detect/latest", json={"data": _b64("coffee.png")}, headers=auth_a).status_code == 429
        r = client.post("/v1/predict", headers=auth_a,
                        json={"input": {"image_url": "http://x/a.png"}, "predictions": [{"model_name": "nudenet"}]})
        assert r.status_code == 429


def _b64(name: str) -> str:
    import base64

    return base64.b64encode(image_bytes(name)).decode()


def test_shed_and_refused_requests_cost_no_quota(settings: Settings, engines: EngineRegistry) -> None:
    """503s for capacity, 404s for unknown deployments and 400s for bad calls are refused before the quota is
    charged; a deployment call is charged what it runs (a single call once, whatever its arguments)."""
    cfg = settings.model_copy(update={"rate_limit": RateLimitSettings(images_per_minute=3),
                                      "server": settings.server.model_copy(update={"max_queue": 2})})
    with TestClient(create_app(cfg, engines=engines)) as client:
        key, _ = client.portal.call(client.app.state.services.keys.create_key, "t")  # type: ignore[attr-defined]
        auth = {"Authorization": f"Bearer {key}"}
        three = v1_request([("c.png", image_bytes("coffee.png"))] * 3, [{"is_yolo": True}] * 3)
        for _ in range(5):  # 3 images for one model, where 2 are admitted at once: shed, and free
            shed = client.post(BATCH, headers=auth, **three)
            assert shed.status_code == 503 and shed.json()["detail"]["code"] == "overloaded", shed.text
            many = {"input": {"image_base64": _b64("coffee.png")}, "predictions": [{"model_name": "nudenet"}] * 3}
            assert client.post("/v1/predict", json=many, headers=auth).status_code == 503
            rows = {"data": [[i, _b64("coffee.png")] for i in range(3)]}
            assert client.post("/v1/detect/latest", json=rows, headers=auth).status_code == 503
            assert client.post("/v1/ghost/latest", json={"data": 1}, headers=auth).status_code == 404
            assert client.post("/v1/detect/latest", json={"data": [[1, "x"], [1, "y"]]},
                               headers=auth).status_code == 400
        # One single call with two arguments runs once: one image of the three the minute allows.
        single = client.post("/v1/detect/latest", json={"data": [_b64("coffee.png"), {"conf": 0.4}]}, headers=auth)
        assert single.status_code == 200, single.text
        two = v1_request([("c.png", image_bytes("coffee.png"))] * 2, [{"is_yolo": True}] * 2)
        assert client.post(BATCH, headers=auth, **two).status_code == 200, "1 + 2: still within 3"
        assert client.post(BATCH, headers=auth, **v1_request([("c.png", image_bytes("coffee.png"))],
                                                             [{"is_yolo": True}])).status_code == 429


def test_unreachable_quota_store_does_not_refuse_traffic(settings: Settings, engines: EngineRegistry) -> None:
    dead = f"async+redis://127.0.0.1:{free_port()}"
    cfg = settings.model_copy(update={"rate_limit": RateLimitSettings(images_per_minute=1, storage_uri=dead)})
    with TestClient(create_app(cfg, engines=engines)) as client:
        key, _ = client.portal.call(client.app.state.services.keys.create_key, "t")  # type: ignore[attr-defined]
        one = v1_request([("c.png", image_bytes("coffee.png"))] * 2, [{"is_yolo": True}] * 2, api_key=key)
        assert client.post(BATCH, **one).status_code == 200
