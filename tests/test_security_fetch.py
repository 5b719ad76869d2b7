"""Adversarial URL fetching: canaries that must see zero connections, DNS rebinding, proxies, and hostile
remote bodies that must end within their deadline and byte cap."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from sight.api.app import create_app
from sight.config import FetchSettings, ImageSettings, Settings
from sight.errors import FetchFailedError, UrlNotAllowedError
from sight.images.fetch import ImageFetcher
from sight.models.registry import EngineRegistry
from tests.conftest import IMAGES
from tests.servers import Canary, HostileServer, ImageServer


@pytest.fixture
def canary() -> Iterator[Canary]:
    with Canary() as c:
        yield c


SPELLINGS = [
    "http://127.0.0.1:{port}/a.png", "http://localhost:{port}/a.png", "http://2130706433:{port}/a.png",
    "http://0177.0.0.1:{port}/a.png", "http://0x7f.0.0.1:{port}/a.png", "http://127.1:{port}/a.png",
    "http://0.0.0.0:{port}/a.png", "http://[::ffff:127.0.0.1]:{port}/a.png", "http://[::1]:{port}/a.png",
    "http://[64:ff9b::7f00:1]:{port}/a.png", "http://[2002:7f00:1::]:{port}/a.png",
    "http://[::127.0.0.1]:{port}/a.png", "http://127.0.0.1.nip.invalid:{port}/a.png",
]


@pytest.mark.anyio
@pytest.mark.parametrize("template", SPELLINGS)
async def test_loopback_in_any_spelling_never_gets_a_connection(template: str, canary: Canary) -> None:
    fetcher = ImageFetcher(FetchSettings(allowed_ports=[80, 443, canary.port]), 10_000_000)
    try:
        with pytest.raises((UrlNotAllowedError, FetchFailedError)):
            await fetcher.fetch(template.format(port=canary.port))
    finally:
        await fetcher.aclose()
    assert canary.connections == 0


@pytest.mark.anyio
@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/", "http://100.100.100.200/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/", "http://10.0.0.1/", "http://172.31.255.255/", "http://192.168.0.1/",
    "http://100.64.1.1/", "http://[fc00::1]/", "http://[fe80::1]/", "http://224.0.0.251/",
    "file:///etc/passwd", "gopher://127.0.0.1:70/", "ftp://example.com/a.png", "dict://127.0.0.1:11211/",
    "http://example.com:8080/a.png", "https://example.com:22/a.png",
])
async def test_private_metadata_schemes_and_ports_are_refused_before_any_io(url: str) -> None:
    async def no_dns(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        raise AssertionError("a refused URL must not even be resolved")

    fetcher = ImageFetcher(FetchSettings(), 10_000_000, resolver=no_dns)
    try:
        with pytest.raises(UrlNotAllowedError):
            await fetcher.fetch(url)
    finally:
        await fetcher.aclose()


TRANSLATED = ["http://[::ffff:0:127.0.0.1]/a.png", "http://[::ffff:0:7f00:1]/a.png", "http://[::ffff:0:10.0.0.1]/",
              "http://[::ffff:0:169.254.169.254]/", "http://[0:0:0:0:ffff:0:8.8.8.8]/a.png"]


@pytest.mark.anyio
@pytest.mark.parametrize("url", TRANSLATED)
async def test_ipv4_translated_addresses_are_refused_before_any_io(url: str) -> None:
    """IPv4-translated addresses (::ffff:0:a.b.c.d, SIIT) are refused whole, whatever they carry: the guard's
    verdict, before any DNS or connection."""
    async def no_dns(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        raise AssertionError("an address literal is not resolved")

    fetcher = ImageFetcher(FetchSettings(), 10_000_000, resolver=no_dns)
    try:
        with pytest.raises(UrlNotAllowedError):
            await fetcher.fetch(url)
    finally:
        await fetcher.aclose()


def _redirecting(location: str, asked: list[str]) -> httpx.MockTransport:
    """A transport (no network at all) where the public image host answers with a redirect to ``location``;
    any other host asked for is recorded, which the test must never see."""
    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url.host))
        return httpx.Response(302, headers={"Location": location})

    return httpx.MockTransport(handle)


async def _public(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipaddress.IPv4Address("93.184.216.34")]


@pytest.mark.anyio
@pytest.mark.parametrize("url", TRANSLATED[:2])
async def test_a_redirect_to_an_ipv4_translated_address_is_refused(url: str) -> None:
    asked: list[str] = []
    fetcher = ImageFetcher(FetchSettings(), 10_000_000, transport=_redirecting(url, asked), resolver=_public)
    try:
        with pytest.raises(UrlNotAllowedError):
            await fetcher.fetch("http://images.example/a.png")
    finally:
        await fetcher.aclose()
    assert asked == ["93.184.216.34"], "only the checked public address was asked"


@pytest.mark.anyio
async def test_a_redirect_to_a_url_httpx_cannot_parse_is_fetch_failed() -> None:
    asked: list[str] = []
    fetcher = ImageFetcher(FetchSettings(), 10_000_000, transport=_redirecting("http:\\\\127.0.0.1/", asked),
                           resolver=_public)
    try:
        with pytest.raises(FetchFailedError, match="redirected to an invalid URL"):
            await fetcher.fetch("http://images.example/a.png")
    finally:
        await fetcher.aclose()
    assert asked == ["93.184.216.34"]


@pytest.mark.anyio
async def test_dns_rebinding_connects_only_to_the_checked_address() -> None:
    answers = [[ipaddress.ip_address("127.0.0.2")], [ipaddress.ip_address("127.0.0.3")]]
    asked: list[str] = []

    async def rebinding(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        asked.append(host)
        return answers[min(len(asked), 2) - 1]  # type: ignore[return-value]

    with ImageServer(IMAGES, host="127.0.0.2") as good, Canary("127.0.0.3", good.httpd.server_address[1]) as bad:
        port = good.httpd.server_address[1]
        # 127.0.0.2 stands in for a public address; 127.0.0.3 is the private one a rebinder switches to.
        fetcher = ImageFetcher(FetchSettings(allow_networks=["127.0.0.2/32"]), 10_000_000, resolver=rebinding)
        try:
            data = await fetcher.fetch(f"http://rebind.test:{port}/astronaut.png")
            assert data == (IMAGES / "astronaut.png").read_bytes()
            assert bad.connections == 0 and len(asked) == 1
            with pytest.raises(UrlNotAllowedError):  # the next hop re-resolves, gets 127.0.0.3, is refused
                await fetcher.fetch(f"http://rebind.test:{port}/redirect?to=http://rebind.test:{port}/coffee.png")
        finally:
            await fetcher.aclose()
        assert bad.connections == 0


@pytest.mark.anyio
async def test_proxy_variables_cannot_route_around_the_guard(monkeypatch: pytest.MonkeyPatch, canary: Canary,
                                                              image_server: ImageServer) -> None:
    proxy = f"http://127.0.0.1:{canary.port}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    fetcher = ImageFetcher(FetchSettings(allow_networks=["127.0.0.0/8"]), 10_000_000)
    try:
        assert await fetcher.fetch(f"{image_server.url}/coffee.png")
    finally:
        await fetcher.aclose()
    assert canary.connections == 0


@pytest.fixture
def hostile_client(settings: Settings, engines: EngineRegistry) -> Iterator[TestClient]:
    cfg = settings.model_copy(update={
        "fetch": FetchSettings(allow_networks=["127.0.0.0/8"], total_timeout=1.5, read_timeout=1.0),
        "images": ImageSettings(max_bytes=200_000),
    })
    app = create_app(cfg, engines=engines)
    with TestClient(app) as client:
        yield client


def test_hostile_remote_bodies_end_in_time_with_item_errors(hostile_client: TestClient,
                                                            image_server: ImageServer) -> None:
    key, _ = hostile_client.portal.call(hostile_client.app.state.services.keys.create_key, "t")  # type: ignore[attr-defined]
    with HostileServer() as hostile:
        hostile.duration = 120  # the endless bodies would outlast any test: only the fetch limits end them
        paths = ["/trickle", "/short", "/long", "/forever", "/html"]
        data = [{"image_url": hostile.url + p, "is_yolo": True} for p in paths]
        data.append({"image_url": f"{image_server.url}/serial-label.png", "is_yolo": True})
        start = time.monotonic()
        r = hostile_client.post("/api/v1/inference/predict/batch/v2", json={"api_key": key, "data": data})
        elapsed = time.monotonic() - start
    assert r.status_code == 200
    codes = [(i["error"] or {}).get("code") for i in r.json()["result"]["items"]]
    assert codes == ["timeout", "fetch_failed", "invalid_image", "image_too_large", "invalid_image", None]
    # The fetch limits (2 s in all here) end every body; without them this would take the full 120 s. The bound
    # is generous, for a busy machine, and still proves the point.
    assert elapsed < 60, f"took {elapsed:.1f}s"
