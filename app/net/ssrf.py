"""The one guard for every URL the gateway reaches on a user's behalf (webhooks, image URLs).

A user-supplied URL is checked twice: when it is accepted (`check_url`: the form of the URL and
literal addresses) and when it is used (`client()`: the host is resolved, every address it resolves
to is checked, and the connection is made to the address that was checked, so a DNS answer that
changes between the check and the connect, "DNS rebinding", cannot redirect it).

Refused by default: loopback, RFC 1918, link-local (cloud metadata at 169.254.169.254), CGNAT,
unique-local and site-local IPv6, IPv4 addresses embedded in IPv6 (mapped, 6to4, NAT64, Teredo)
that are themselves refused, multicast, unspecified, reserved and documentation ranges, and host
names written as numbers in forms other than dotted decimal (2130706433, 0x7f000001, 0177.0.0.1,
127.1), which resolvers read differently. `GATEWAY_OUTBOUND_ALLOWLIST` names host names or CIDR
ranges that may be reached even so, for internal receivers and tests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Ranges that `is_global` lets through but that no webhook or image server should be.
_EXTRA_BLOCKED = [
    ipaddress.ip_network(n)
    for n in (
        "100.64.0.0/10",  # CGNAT (shared address space)
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "fec0::/10",  # site-local, deprecated but still routed by some stacks
    )
]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeUrl(ValueError):
    """A URL the gateway will not reach; `reason` is safe to show to the user who gave it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    # The deprecated IPv4-compatible form ::a.b.c.d (but not :: and ::1 themselves).
    if int(addr) >> 32 == 0 and int(addr) > 1:
        return ipaddress.IPv4Address(int(addr))
    return None


def blocked_reason(addr: IPAddress) -> str | None:
    """Why an address may not be reached, or None if it is a public unicast address."""
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_ipv4(addr)
        if inner is not None:
            reason = blocked_reason(inner)
            return f"embeds {inner}, which {reason}" if reason else None
    if addr.is_unspecified:
        return "is the unspecified address"
    if addr.is_loopback:
        return "is a loopback address"
    if addr.is_link_local:
        return "is a link-local address"
    if addr.is_multicast:
        return "is a multicast address"
    if addr.is_private:
        return "is a private address"
    if any(addr in net for net in _EXTRA_BLOCKED if net.version == addr.version):
        return "is a shared or reserved address"
    if addr.is_reserved or not addr.is_global:
        return "is a reserved address"
    return None


def _non_canonical_number(host: str) -> bool:
    """True for hosts that C resolvers read as an IPv4 address though they are not dotted decimal."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class OutboundGuard:
    def __init__(self, allowlist: Iterable[str] = (), *, resolver: Resolver | None = None) -> None:
        self._hosts: set[str] = set()
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allowlist:
            entry = entry.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._hosts.add(entry)
        self._resolve = resolver or _system_resolver

    # --- accept time ------------------------------------------------------------------------

    def check_url(self, url: str) -> str:
        """Check a URL's form and any literal address in it; returns it normalised."""
        scheme, host, port = self._parts(url)
        literal = self._literal(host)
        if literal is not None:
            self._check_address(host, literal)
        return urlsplit(url.strip())._replace(scheme=scheme).geturl()

    # --- use time ---------------------------------------------------------------------------

    async def resolve(self, url: str) -> list[IPAddress]:
        """Every address the URL's host resolves to, each checked; raises UnsafeUrl."""
        scheme, host, port = self._parts(url)
        return await self._resolve_host(host, port)

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An httpx client that reaches only checked addresses and never follows redirects.

        `trust_env` is off: a proxy from the environment would resolve the host itself.
        """
        transport_kwargs = {k: kwargs.pop(k) for k in ("verify", "retries") if k in kwargs}
        kwargs.setdefault("timeout", 15.0)
        return httpx.AsyncClient(
            transport=_PinnedTransport(self, **transport_kwargs),
            follow_redirects=False,
            trust_env=False,
            **kwargs,
        )

    # --- internals --------------------------------------------------------------------------

    def _parts(self, url: str) -> tuple[str, str, int]:
        if not isinstance(url, str) or not url.strip():
            raise UnsafeUrl("the URL is empty")
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise UnsafeUrl(f"the URL is malformed ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise UnsafeUrl("only http and https URLs are allowed")
        if parts.username is not None or parts.password is not None:
            raise UnsafeUrl("credentials in the URL are not allowed")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise UnsafeUrl("the URL has no host")
        return scheme, host, port or (443 if scheme == "https" else 80)

    def _literal(self, host: str) -> IPAddress | None:
        try:
            return ipaddress.ip_address(host)
        except ValueError:
            pass
        if _non_canonical_number(host):
            raise UnsafeUrl(f"the host {host!r} is a number in a non-standard form; write addresses in dotted decimal")
        return None

    def _allowed(self, host: str, addr: IPAddress) -> bool:
        if host.lower() in self._hosts:
            return True
        candidates = [addr]
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            candidates.append(addr.ipv4_mapped)
        return any(a in net for a in candidates for net in self._networks if net.version == a.version)

    def _check_address(self, host: str, addr: IPAddress) -> None:
        if self._allowed(host, addr):
            return
        reason = blocked_reason(addr)
        if reason:
            shown = host if host == str(addr) else f"{host} ({addr})"
            raise UnsafeUrl(f"{shown} {reason}; it may not be reached unless allow-listed")

    async def _resolve_host(self, host: str, port: int) -> list[IPAddress]:
        literal = self._literal(host)
        if literal is not None:
            self._check_address(host, literal)
            return [literal]
        try:
            answers = await self._resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise UnsafeUrl(f"the host {host!r} could not be resolved ({exc})") from None
        if not answers:
            raise UnsafeUrl(f"the host {host!r} has no address")
        addresses = []
        for answer in answers:
            # Strip an IPv6 zone ("fe80::1%eth0"): the address is link-local either way.
            addr = ipaddress.ip_address(answer.split("%", 1)[0])
            self._check_address(host, addr)
            addresses.append(addr)
        return addresses


class _PinnedTransport(httpx.AsyncHTTPTransport):
    """Resolves and checks each request's host, then connects to that very address.

    The URL's host is replaced by the checked address; the `Host` header keeps the name, and TLS
    uses it for SNI and certificate checks (httpcore's `sni_hostname` extension).
    """

    def __init__(self, guard: OutboundGuard, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guard = guard

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        try:
            _, host, port = self._guard._parts(str(url))
            addresses = await self._guard._resolve_host(host, port)
        except UnsafeUrl as exc:
            raise UnsafeRequest(exc.reason, request=request) from None
        request.url = url.copy_with(host=str(addresses[0]))
        request.headers.setdefault("Host", url.netloc.decode("ascii"))
        if url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": host}
        return await super().handle_async_request(request)


class UnsafeRequest(httpx.RequestError):
    """Raised by a guarded client when the target resolved to an address that may not be reached."""

    def __init__(self, reason: str, *, request: httpx.Request) -> None:
        super().__init__(reason, request=request)
        self.reason = reason
