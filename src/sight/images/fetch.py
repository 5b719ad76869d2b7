"""Download an image from a user-given URL: guarded, pinned to the checked address, capped and timed."""

from __future__ import annotations

import ipaddress

import anyio
import httpx

from sight.config import FetchSettings
from sight.errors import FetchFailedError, ImageTooLargeError, StageTimeoutError
from sight.images.urlguard import Resolver, Target, UrlGuard, system_resolver

REDIRECT_STATUS = {301, 302, 303, 307, 308}
USER_AGENT = "sight-fetch/0.1"


def pinned_request(client: httpx.AsyncClient, target: Target) -> httpx.Request:
    """A GET to ``target.address`` that still names the original host (Host header and TLS SNI)."""
    host = target.address.compressed
    url = target.url.copy_with(host=host if isinstance(target.address, ipaddress.IPv4Address) else f"[{host}]")
    default_port = 443 if target.url.scheme == "https" else 80
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    if ":" in target.host and not target.host.startswith("["):
        host_header = f"[{target.host}]" if target.port == default_port else f"[{target.host}]:{target.port}"
    extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
    return client.build_request(
        "GET", url, headers={"Host": host_header, "User-Agent": USER_AGENT}, extensions=extensions
    )


class ImageFetcher:
    """Fetches ``http(s)`` URLs through :class:`UrlGuard`; every redirect hop is checked again."""

    def __init__(
        self, settings: FetchSettings, max_bytes: int, transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.settings = settings
        self.max_bytes = max_bytes
        self.guard = UrlGuard(settings, resolver)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            follow_redirects=False,
            trust_env=False,  # proxy variables must not route around the guard
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        try:
            with anyio.fail_after(self.settings.total_timeout):
                return await self._fetch(url)
        except TimeoutError as exc:
            raise StageTimeoutError(f"fetching the image took longer than {self.settings.total_timeout}s") from exc

    async def _fetch(self, url: str) -> bytes:
        current: str | httpx.URL = url
        for _hop in range(self.settings.max_redirects + 1):
            target = await self.guard.resolve(current)
            request = pinned_request(self._client, target)
            try:
                response = await self._client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise FetchFailedError("the image server timed out") from exc
            except httpx.HTTPError as exc:
                raise FetchFailedError(f"could not fetch the image: {type(exc).__name__}") from exc
            except httpx.InvalidURL as exc:  # httpx reads a redirect's Location as it receives the answer
                raise FetchFailedError("the image server redirected to an invalid URL") from exc
            try:
                if response.status_code in REDIRECT_STATUS and "location" in response.headers:
                    try:
                        current = target.url.join(response.headers["location"])
                    except (httpx.InvalidURL, ValueError) as exc:  # e.g. http:\\host: not a URL httpx can follow
                        raise FetchFailedError("the image server redirected to an invalid URL") from exc
                    continue
                if response.status_code != 200:
                    raise FetchFailedError(f"the image server answered HTTP {response.status_code}")
                return await self._read_capped(response)
            finally:
                await response.aclose()
        raise FetchFailedError(f"more than {self.settings.max_redirects} redirects")

    async def _read_capped(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise ImageTooLargeError(f"image is {declared} bytes; the limit is {self.max_bytes}")
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise ImageTooLargeError(f"image is larger than {self.max_bytes} bytes")
                chunks.append(chunk)
        except httpx.TimeoutException as exc:
            raise FetchFailedError("the image server stopped sending") from exc
        except httpx.HTTPError as exc:
            raise FetchFailedError(f"the image download broke off: {type(exc).__name__}") from exc
        return b"".join(chunks)
