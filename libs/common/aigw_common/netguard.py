"""Which addresses an upstream may have, decided once, for create time and for connect time.

A provider's base URL is an admin's input, but the address it names is whoever controls DNS: a guard that
only looks at literal IPs lets ``169.254.169.254.nip.io`` through. So the registry checks what it can at
create time (literal addresses, well-known metadata names), and every outgoing upstream connection is
checked again on the address it actually connects to, after DNS, by :func:`upstream_connector`.

Classes (``AIGW_ALLOW_PRIVATE_UPSTREAMS`` takes ``true``, ``false`` or a comma list of these):

- ``loopback``: 127.0.0.0/8, ::1, ``localhost``
- ``private``: 10/8, 172.16/12, 192.168/16, fc00::/7
- ``link-local``: 169.254/16, fe80::/10
- ``cgnat``: 100.64.0.0/10 (shared address space; Alibaba's metadata lives there)
- ``metadata``: cloud instance metadata (169.254.169.254, 169.254.170.2, 169.254.170.23, fd00:ec2::254,
  fd00:ec2::23, 100.100.100.200, and the names ``metadata.google.internal``, ``metadata.goog``,
  ``instance-data``, ``instance-data.ec2.internal``); refused by its own class first, so allowing
  ``link-local`` does not open the metadata service
- ``reserved``: every other non-global address (0/8, multicast, 240/4, benchmarking, documentation, ::)

IPv6 forms that embed an IPv4 address (v4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4, Teredo)
are classified by the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CLASSES = ("loopback", "private", "link-local", "cgnat", "metadata", "reserved")

METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.170.23", "100.100.100.200", "fd00:ec2::254", "fd00:ec2::23",
))
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data",
                            "instance-data.ec2.internal"})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_PRIVATE_V4 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_ULA = ipaddress.ip_network("fc00::/7")


class ForbiddenAddress(OSError):
    """An upstream connection to an address of a class that is not allowed (an ``OSError``, so aiohttp
    reports it as a connection error and never sends a byte)."""

    def __init__(self, host: str, address: str, klass: str) -> None:
        super().__init__(f"{host} resolves to {address}, a {klass} address; "
                         "AIGW_ALLOW_PRIVATE_UPSTREAMS does not allow it")
        self.host, self.address, self.klass = host, address, klass


def classify(ip: IPAddress) -> str | None:
    """The class of a non-public address, or None for a public (globally routable) one."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return classify(embedded)
    if ip in METADATA_ADDRESSES:
        return "metadata"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in _CGNAT:
            return "cgnat"
        if any(ip in n for n in _PRIVATE_V4):
            return "private"
    elif ip in _ULA:
        return "private"
    if not ip.is_global or ip.is_multicast:
        return "reserved"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address a host literal denotes, including the legacy forms ``inet_aton`` accepts
    (``2852039166``, ``0xa9.0xfe.0xa9.0xfe``, ``127.1``), or None for a name."""
    h = host.strip("[]")
    try:
        return ipaddress.ip_address(h.partition("%")[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(h))
    except OSError:
        return None


def classify_host(host: str) -> str | None:
    """Create-time check of a base URL's host: a literal address's class, ``metadata`` for the well-known
    metadata names, ``loopback`` for ``localhost``; None for any other name (checked at connect time)."""
    h = host.lower().rstrip(".")
    if h in METADATA_HOSTS:
        return "metadata"
    if h == "localhost" or h.endswith(".localhost"):
        return "loopback"
    ip = literal_address(h)
    return classify(ip) if ip is not None else None


def parse_allowed(name: str, raw: str) -> frozenset[str]:
    """``true`` → every class, ``false`` → none, or a comma list of :data:`CLASSES`; ValueError otherwise."""
    v = raw.strip().lower()
    if v in {"1", "true", "yes", "on", "all"}:
        return frozenset(CLASSES)
    if v in {"0", "false", "no", "off", "none"}:
        return frozenset()
    items = [i.strip() for i in v.split(",") if i.strip()]
    bad = [i for i in items if i not in CLASSES]
    if bad or not items:
        raise ValueError(f"{name}={raw!r}: expected true, false or a comma list of {', '.join(CLASSES)}")
    return frozenset(items)


def check(host: str, address: str, allowed: frozenset[str]) -> None:
    """Raise :class:`ForbiddenAddress` unless ``address`` is public or of an allowed class."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    klass = classify(ip)
    if klass is not None and klass not in allowed:
        raise ForbiddenAddress(host, str(ip), klass)


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` and refuses the whole name when any address it returns is not allowed
    (an attacker's DNS may answer one public and one private address)."""

    def __init__(self, inner: AbstractResolver, allowed: frozenset[str]) -> None:
        self.inner = inner
        self.allowed = allowed

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        for r in results:
            check(host, r["host"], self.allowed)
        return results

    async def close(self) -> None:
        await self.inner.close()


def _socket_factory(allowed: frozenset[str]) -> Any:
    """The last check, on the exact address a socket is about to connect to: literal IPs never reach a
    resolver in aiohttp, and nothing else can slip between resolution and connect."""

    def make(addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _canon, sockaddr = addr_info
        check(str(sockaddr[0]), str(sockaddr[0]), allowed)
        return socket.socket(family=family, type=type_, proto=proto)

    return make


def upstream_connector(allowed: Iterable[str], *, resolver: AbstractResolver | None = None,
                       **kw: Any) -> aiohttp.TCPConnector:
    """A connector for calls to LLM providers: every address checked after DNS and again at connect."""
    allowed = frozenset(allowed)
    inner = resolver or aiohttp.DefaultResolver()
    return aiohttp.TCPConnector(resolver=GuardedResolver(inner, allowed), socket_factory=_socket_factory(allowed), **kw)


def forbidden_cause(exc: BaseException) -> ForbiddenAddress | None:
    """The :class:`ForbiddenAddress` behind an aiohttp connection error, if that is what it was."""
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ForbiddenAddress):
        return exc.os_error
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ForbiddenAddress):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
