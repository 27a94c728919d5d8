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

The gateway's own ComfyUI backends are never reached, whatever the allow-list says: `forbidden`
gives their URLs as they are at the time of each check (the pool changes at run time), and a
target whose host name, or any address it resolves to, meets a backend's on the same port is
refused. ComfyUI has no per-user authorization (`/view` serves any user's output, `/interrupt`
stops whatever runs), so a user who reached it would act as the gateway.

Refusals name what the user wrote, never what a name resolved to: they would otherwise map the
internal DNS for anyone who submits URLs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx

log = logging.getLogger("app.net")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
# The base URLs the guard must never reach (the backends), read afresh at every check.
Forbidden = Callable[[], Awaitable[Iterable[str]]]
# A backend at one of these is reached through any of them: one listening on all interfaces
# answers on 127.0.0.2 or 0.0.0.0 as well as on 127.0.0.1.
_THIS_HOST = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "0.0.0.0/32", "::1/128", "::/128")]
# An answer the guard may not reach, told without what the name resolved to.
_UNREACHABLE_NAME = "{host} does not resolve to an address the gateway may reach"

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
# How long accepting a URL waits for its name to resolve (the check at use does not depend on it).
_ACCEPT_RESOLVE_SECONDS = 2.0


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


def _plain(addr: IPAddress) -> IPAddress:
    """The IPv4 address an IPv4-mapped IPv6 address stands for; any other address as is."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _this_host(addr: IPAddress) -> bool:
    return any(addr in net for net in _THIS_HOST if net.version == addr.version)


class OutboundGuard:
    def __init__(
        self,
        allowlist: Iterable[str] = (),
        *,
        resolver: Resolver | None = None,
        forbidden: Forbidden | None = None,
    ) -> None:
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
        self._forbidden = forbidden

    # --- accept time ------------------------------------------------------------------------

    def check_url(self, url: str) -> str:
        """Check a URL's form and any literal address in it; returns it normalised."""
        scheme, host, port = self._parts(url)
        literal = self._literal(host)
        if literal is not None:
            self._check_address(host, literal, resolved=False)
        return urlsplit(url.strip())._replace(scheme=scheme).geturl()

    async def accept(self, url: str) -> str:
        """`check_url`, and not a backend: by its name or literal address, or by what its name
        resolves to now (a name that does not resolve yet is let through: it is resolved and
        checked again, completely, at every use)."""
        checked = self.check_url(url)
        _, host, port = self._parts(checked)
        literal = self._literal(host)
        await self._refuse_backends(host, port, [literal] if literal is not None else None)
        return checked

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
        try:
            # What the HTTP client would refuse (hosts that are not valid IDNA, such as digits in
            # other scripts, lone surrogates, control characters) is refused here, as a refusal.
            httpx.URL(url.strip())
        except (httpx.InvalidURL, UnicodeError, ValueError):
            if host.isascii():
                self._literal(host)  # a number in another form: refused with its own reason
            raise UnsafeUrl("the URL is malformed") from None
        return scheme, host, port or (443 if scheme == "https" else 80)

    def _literal(self, host: str) -> IPAddress | None:
        try:
            return ipaddress.ip_address(host)
        except ValueError:
            pass
        if _non_canonical_number(host):
            raise UnsafeUrl(
                f"the host {host!r} is a number in a non-standard form; write addresses in dotted decimal"
            )
        return None

    def _allowed(self, host: str, addr: IPAddress) -> bool:
        if host.lower() in self._hosts:
            return True
        candidates = [addr]
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            candidates.append(addr.ipv4_mapped)
        return any(a in net for a in candidates for net in self._networks if net.version == a.version)

    def _check_address(self, host: str, addr: IPAddress, *, resolved: bool) -> None:
        if self._allowed(host, addr):
            return
        reason = blocked_reason(addr)
        if reason:
            if resolved:
                raise UnsafeUrl(_UNREACHABLE_NAME.format(host=host))
            raise UnsafeUrl(f"{host} {reason}; it may not be reached unless allow-listed")

    async def _resolve_host(self, host: str, port: int) -> list[IPAddress]:
        literal = self._literal(host)
        if literal is not None:
            self._check_address(host, literal, resolved=False)
            addresses = [literal]
        else:
            try:
                answers = await self._resolve(host, port)
                addresses = [_address(answer) for answer in answers]
            except (OSError, UnicodeError, ValueError):
                # Why it failed (no such name, a timeout ...) is for the server's logs alone.
                raise UnsafeUrl(_UNREACHABLE_NAME.format(host=host)) from None
            if not addresses:
                raise UnsafeUrl(_UNREACHABLE_NAME.format(host=host))
            for addr in addresses:
                self._check_address(host, addr, resolved=True)
        await self._refuse_backends(host, port, addresses)
        return addresses

    async def _refuse_backends(self, host: str, port: int, addresses: list[IPAddress] | None) -> None:
        """UnsafeUrl if host:port, or any of its addresses on that port, is a backend's. `addresses`
        None: resolved here, if a backend listens on that port, and a name that does not resolve
        (yet) passes (at accept time: it is resolved and checked again, completely, at each use)."""
        if self._forbidden is None:
            return
        try:
            urls = list(await self._forbidden())
        except Exception:  # noqa: BLE001 - unknown backends: refuse rather than risk reaching one
            log.warning("could not read the backends the outbound guard keeps closed", exc_info=True)
            raise UnsafeUrl("the URL cannot be checked now; try again later") from None
        backends = []
        for url in urls:
            try:
                _, b_host, b_port = self._parts(url)
            except UnsafeUrl:
                continue
            if b_port == port:
                backends.append(b_host)
        if not backends:
            return
        if addresses is None:
            addresses = []
            try:
                async with asyncio.timeout(_ACCEPT_RESOLVE_SECONDS):
                    addresses = [_address(a) for a in await self._resolve(host, port)]
            except (OSError, UnicodeError, ValueError, TimeoutError):
                pass
        targets = [_plain(a) for a in addresses]
        for b_host in backends:
            if b_host.lower() == host.lower():
                raise UnsafeUrl(f"{host}:{port} may not be reached")
            literal = self._literal_or_none(b_host)
            if literal is not None:
                backend_addresses = [literal]
            else:
                try:
                    backend_addresses = [_address(a) for a in await self._resolve(b_host, port)]
                except (OSError, UnicodeError, ValueError):
                    continue  # a backend that does not resolve cannot be reached by this name either
            for b_addr in map(_plain, backend_addresses):
                if any(t == b_addr or (_this_host(t) and _this_host(b_addr)) for t in targets):
                    raise UnsafeUrl(f"{host}:{port} may not be reached")

    def _literal_or_none(self, host: str) -> IPAddress | None:
        try:
            return self._literal(host)
        except UnsafeUrl:
            return None


def _address(answer: str) -> IPAddress:
    # Strip an IPv6 zone ("fe80::1%eth0"): the address is link-local either way.
    return ipaddress.ip_address(answer.split("%", 1)[0])


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
