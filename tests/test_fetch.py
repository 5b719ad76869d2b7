"""v2 URL input: the SSRF guard, redirects, caps, and fetching from a loopback server when allowed."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from sight.api.app import create_app
from sight.config import FetchSettings, ImageSettings, Settings
from sight.errors import UrlNotAllowedError
from sight.images.urlguard import UrlGuard, is_blocked
from sight.models.registry import EngineRegistry
from tests.servers import ImageServer

BATCH_V2 = "/api/v1/inference/predict/batch/v2"


@contextmanager
def _client_with(settings: Settings, engines: EngineRegistry, **changes: object) -> Iterator[tuple[TestClient, str]]:
    app = create_app(settings.model_copy(update=changes), engines=engines)
    with TestClient(app) as client:
        key, _ = client.portal.call(app.state.services.keys.create_key, "t")
        yield client, key


def _items(client: TestClient, key: str, urls: list[str]) -> list[dict]:  # type: ignore[type-arg]
    data = [{"image_url": u, "is_yolo": True} for u in urls]
    r = client.post(BATCH_V2, json={"api_key": key, "data": data})
    assert r.status_code == 200, r.text
    return r.json()["result"]["items"]  # type: ignore[no-any-return]


def test_loopback_url_is_refused_without_allow_list(
    client: TestClient, api_key: str, image_server: ImageServer
) -> None:
    before = len(image_server.hits)
    items = _items(client, api_key, [f"{image_server.url}/astronaut.png"])
    assert items[0]["error"]["code"] == "url_not_allowed"
    assert len(image_server.hits) == before, "not a single request may reach the target"


def test_urls_are_fetched_when_the_test_allow_list_permits(
    settings: Settings, engines: EngineRegistry, image_server: ImageServer
) -> None:
    base = image_server.url
    with _client_with(settings, engines, fetch=FetchSettings(allow_networks=["127.0.0.0/8"])) as (client, key):
        items = _items(client, key, [
            f"{base}/astronaut.png",
            f"{base}/missing.png",
            f"{base}/redirect?to={base}/astronaut.png",
            f"{base}/redirect?to=http://169.254.169.254/latest/meta-data",
            "ftp://example.com/a.png",
            f"{base}/coffee.png",
        ])
    assert items[0]["status"] == "done" and items[0]["filename"] == "astronaut.png"
    assert items[0]["yolo"]["detections"][0]["name"] == "FACE_FEMALE"
    assert items[0]["timings_ms"]["fetch"] > 0
    assert items[1]["error"]["code"] == "fetch_failed"
    assert items[2]["status"] == "done", "a redirect within allowed space is followed"
    assert items[3]["error"]["code"] == "url_not_allowed", "every redirect hop is checked"
    assert items[4]["error"]["code"] == "url_not_allowed"
    assert items[5]["status"] == "done"


def test_redirect_chain_is_capped(settings: Settings, engines: EngineRegistry, image_server: ImageServer) -> None:
    base = image_server.url
    url = f"{base}/astronaut.png"
    for _ in range(4):
        url = f"{base}/redirect?to={url.replace('?', '%3F').replace('=', '%3D').replace('&', '%26')}"
    with _client_with(settings, engines, fetch=FetchSettings(allow_networks=["127.0.0.0/8"])) as (client, key):
        items = _items(client, key, [url])
    assert items[0]["error"]["code"] == "fetch_failed"
    assert "redirect" in items[0]["error"]["message"]


def test_fetch_byte_cap_and_deadline(settings: Settings, engines: EngineRegistry, image_server: ImageServer) -> None:
    with _client_with(
        settings, engines,
        fetch=FetchSettings(allow_networks=["127.0.0.0/8"], total_timeout=1.0, read_timeout=5.0),
        images=ImageSettings(max_bytes=100_000),
    ) as (client, key):
        base = image_server.url
        items = _items(client, key, [f"{base}/astronaut.png", f"{base}/slow/serial-label.png?s=3",
                                     f"{base}/serial-label.png"])
    assert items[0]["error"]["code"] == "image_too_large"
    assert items[1]["error"]["code"] == "timeout"
    assert items[2]["status"] == "done"


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0", "169.254.169.254", "10.1.2.3", "172.16.0.1",
     "192.168.1.1", "100.64.0.1", "100.100.100.200", "fc00::1", "fd00:ec2::254", "fe80::1", "224.0.0.1",
     "64:ff9b::a00:1", "2002:c0a8:101::1", "::7f00:1"],
)
def test_blocked_addresses(address: str) -> None:
    assert is_blocked(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::6810:85e5", "64:ff9b::5db8:d822", "8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert not is_blocked(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1/a.png", "http://[::1]/a.png", "http://[::ffff:127.0.0.1]/a.png", "http://2130706433/a",
     "http://0177.0.0.1/a", "http://localhost/a", "file:///etc/passwd", "gopher://example.com/",
     "http://user:pw@example.com/a.png", "http://169.254.169.254/latest/meta-data/", "http://8.8.8.8:8080/a"],
)
@pytest.mark.anyio
async def test_guard_refuses_without_connecting(url: str) -> None:
    guard = UrlGuard(FetchSettings())
    with pytest.raises(UrlNotAllowedError):
        await guard.resolve(url)
