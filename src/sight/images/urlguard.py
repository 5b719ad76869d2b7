"""Which URLs the server may fetch: public http(s) addresses on allowed ports, nothing else.

The check is on resolved addresses, and the fetcher then connects to exactly the address that was
checked, so DNS rebinding between check and connect cannot steer it elsewhere.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
import httpx

from sight.config import FetchSettings
from sight.errors import FetchFailedError, UrlNotAllowedError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Explicit ranges: Python 3.11's is_private / is_global miss several of these.
BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches localhost on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT; also Alibaba's metadata 100.100.100.200
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local; cloud metadata 169.254.169.254
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/128",
        "::1/128",
        "100::/64",  # discard
        "2001:db8::/32",
        "fc00::/7",  # unique local; AWS IPv6 metadata fd00:ec2::254
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# IPv4-translated addresses (SIIT, RFC 2765: ::ffff:0:a.b.c.d) and the other IPv6 forms that carry an IPv4
# address in their low 32 bits: refused whole, whatever the address they carry.
TRANSLATED_NETWORKS = (ipaddress.ip_network("::ffff:0:0:0/96"),)
DEFAULT_PORTS = {"http": 80, "https": 443}


def embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses carried inside an IPv6 one: mapped, compatible, 6to4, Teredo, NAT64."""
    found: list[ipaddress.IPv4Address] = []
    if addr.ipv4_mapped:
        found.append(addr.ipv4_mapped)
    if addr.sixtofour:
        found.append(addr.sixtofour)
    if addr.teredo:
        found.extend(addr.teredo)
    if any(addr in net for net in (*NAT64_PREFIXES, *TRANSLATED_NETWORKS)) or int(addr) >> 32 == 0:
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))  # NAT64 / translated / IPv4-compatible
    return found


def is_blocked(addr: IPAddress) -> bool:
    if any(addr in net for net in BLOCKED_NETWORKS if net.version == addr.version):
        return True
    if isinstance(addr, ipaddress.IPv6Address) and any(addr in net for net in TRANSLATED_NETWORKS):
        return True
    if isinstance(addr, ipaddress.IPv6Address):
        return any(is_blocked(v4) for v4 in embedded_ipv4(addr))
    return False


@dataclass(frozen=True, slots=True)
class Target:
    """A URL that passed the guard, and the one address the fetcher must connect to."""

    url: httpx.URL
    host: str
    port: int
    address: IPAddress


Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise FetchFailedError(f"could not resolve host {host!r}") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        addresses.append(addr)
    return addresses


class UrlGuard:
    def __init__(self, settings: FetchSettings, resolver: Resolver = system_resolver) -> None:
        self.resolver = resolver
        self.allowed_ports = set(settings.allowed_ports)
        self.allow_networks = tuple(ipaddress.ip_network(n, strict=False) for n in settings.allow_networks)

    def _explicitly_allowed(self, addr: IPAddress) -> bool:
        return any(addr in net for net in self.allow_networks if net.version == addr.version)

    def check_url(self, raw: str | httpx.URL) -> tuple[httpx.URL, str, int]:
        """Syntax and scheme checks that need no DNS."""
        try:
            url = httpx.URL(raw)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise UrlNotAllowedError("malformed URL") from exc
        if url.scheme not in DEFAULT_PORTS:
            raise UrlNotAllowedError(f"only http and https URLs are fetched, not {url.scheme or 'no scheme'!r}")
        if not url.host:
            raise UrlNotAllowedError("URL has no host")
        if url.userinfo:
            raise UrlNotAllowedError("URLs with credentials are not fetched")
        port = url.port or DEFAULT_PORTS[url.scheme]
        if port not in self.allowed_ports and not self.allow_networks:
            raise UrlNotAllowedError(f"port {port} is not allowed")
        return url, url.host, port

    def check_addresses(self, addresses: Sequence[IPAddress], port: int) -> IPAddress:
        """The address to connect to, if every resolved address is allowed."""
        if not addresses:
            raise FetchFailedError("host did not resolve")
        for addr in addresses:
            allowed = self._explicitly_allowed(addr)
            if is_blocked(addr) and not allowed:
                raise UrlNotAllowedError("URL resolves to a private, loopback or reserved address")
            if port not in self.allowed_ports and not allowed:
                raise UrlNotAllowedError(f"port {port} is not allowed")
        return addresses[0]

    async def resolve(self, raw: str | httpx.URL) -> Target:
        url, host, port = self.check_url(raw)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        addresses = [literal] if literal is not None else await self.resolver(host, port)
        return Target(url, host, port, self.check_addresses(addresses, port))
