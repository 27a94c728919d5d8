"""The outbound URL guard: what it refuses, what the allow-list lets through, and that a guarded
client connects to the address it checked (one resolution per request, no redirects)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from aiohttp import web

from app.net.ssrf import OutboundGuard, UnsafeRequest, UnsafeUrl

REFUSED_LITERALS = [
    "http://127.0.0.1/",
    "http://127.255.0.9/",
    "http://[::1]/",
    "http://10.0.0.5/",
    "http://172.16.3.4/",
    "http://172.31.255.255/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/",
    "http://100.64.0.1/",
    "http://100.127.255.254/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:10.1.2.3]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[2002:7f00:1::]/",
    "http://[::127.0.0.1]/",
    "http://224.0.0.1/",
    "http://239.255.255.250/",
    "http://[ff02::1]/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://198.18.0.1/",
    "http://[fec0::1]/",
]

NUMERIC_TRICKS = [
    "http://2130706433/",  # decimal 127.0.0.1
    "http://0x7f000001/",  # hex
    "http://0x7f.0x0.0x0.0x1/",
    "http://0177.0.0.1/",  # octal
    "http://017700000001/",
    "http://127.1/",  # short forms
    "http://10.1/",
    "http://0/",
    "http://0x7f.1/",
    "http://3232235777/",  # 192.168.1.1
]

BAD_FORMS = [
    "ftp://example.com/file",
    "file:///etc/passwd",
    "gopher://example.com/",
    "javascript:alert(1)",
    "http://user:pass@example.com/",
    "http://user@example.com/",
    "http:///path-only",
    "",
    "http://example.com:99999/",
]


@pytest.mark.parametrize("url", REFUSED_LITERALS)
def test_private_and_special_addresses_are_refused_when_accepted(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        OutboundGuard().check_url(url)


@pytest.mark.parametrize("url", NUMERIC_TRICKS)
def test_numbers_in_other_forms_than_dotted_decimal_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl, match="non-standard form"):
        OutboundGuard(["0.0.0.0/0"]).check_url(url)


@pytest.mark.parametrize("url", BAD_FORMS)
def test_other_schemes_credentials_and_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        OutboundGuard().check_url(url)


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/x?y=1", "http://93.184.215.14:8080/", "https://[2606:4700::1111]/"]
)
def test_public_urls_pass_the_accept_time_check(url: str) -> None:
    assert OutboundGuard().check_url(url) == url


def test_allowlist_lets_named_ranges_and_hosts_through_and_nothing_else() -> None:
    guard = OutboundGuard(["127.0.0.1/32", "10.20.0.0/16", "Receiver.Internal"])
    guard.check_url("http://127.0.0.1:9000/hook")
    guard.check_url("http://[::ffff:127.0.0.1]/")  # the same address, written as IPv6
    guard.check_url("http://10.20.3.4/")
    with pytest.raises(UnsafeUrl):
        guard.check_url("http://127.0.0.2/")
    with pytest.raises(UnsafeUrl):
        guard.check_url("http://10.21.0.1/")


def _resolver(table: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise OSError("Name or service not known")
        return table[host]

    return resolve


async def test_every_resolved_address_is_checked() -> None:
    guard = OutboundGuard(
        resolver=_resolver(
            {
                "public.test": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
                "mixed.test": ["93.184.215.14", "10.0.0.7"],
                "metadata.test": ["169.254.169.254"],
                "mapped.test": ["::ffff:192.168.0.1"],
            }
        )
    )
    assert [str(a) for a in await guard.resolve("https://public.test/")][0] == "93.184.215.14"
    for host in ("mixed.test", "metadata.test", "mapped.test"):
        with pytest.raises(UnsafeUrl, match=host):
            await guard.resolve(f"https://{host}/")
    with pytest.raises(UnsafeUrl, match="nowhere.test does not resolve"):
        await guard.resolve("https://nowhere.test/")


async def test_a_refusal_never_tells_what_a_name_resolved_to() -> None:
    guard = OutboundGuard(
        resolver=_resolver({"db.internal": ["10.1.2.3"], "meta.internal": ["169.254.169.254"]})
    )
    reasons = []
    for host in ("db.internal", "meta.internal", "nowhere.internal"):
        with pytest.raises(UnsafeUrl) as refused:
            await guard.resolve(f"https://{host}/")
        reasons.append(refused.value.reason.replace(host, "HOST"))
    # One answer for an internal name, another internal name and a name that does not exist.
    assert len(set(reasons)) == 1 and not any(c.isdigit() for c in reasons[0]), reasons


async def test_allowlisted_host_name_may_resolve_to_a_private_address() -> None:
    guard = OutboundGuard(["receiver.internal"], resolver=_resolver({"receiver.internal": ["10.0.0.9"]}))
    assert [str(a) for a in await guard.resolve("http://receiver.internal/")] == ["10.0.0.9"]


@pytest.fixture
async def receiver():
    seen: list[dict[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append({"host": request.headers["Host"], "path": request.path_qs})
        return web.Response(text="ok")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    app = web.Application()
    app.router.add_route("*", "/hook", hook)
    app.router.add_route("*", "/redirect", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield port, seen
    await runner.cleanup()


async def test_guarded_client_connects_to_the_checked_address_and_keeps_the_host_name(receiver) -> None:
    port, seen = receiver
    calls: list[str] = []
    # The name resolves to loopback, which the allow-list permits; the request must reach the
    # very address that was checked, with one resolution, and carry the name in Host.
    guard = OutboundGuard(["127.0.0.1/32"], resolver=_resolver({"hooks.test": ["127.0.0.1"]}, calls))
    async with guard.client(timeout=5) as client:
        response = await client.post(f"http://hooks.test:{port}/hook?a=1", content=b"{}")
    assert response.status_code == 200
    assert seen == [{"host": f"hooks.test:{port}", "path": "/hook?a=1"}]
    assert calls == ["hooks.test"]


async def test_guarded_client_refuses_a_name_that_resolves_to_a_refused_address(receiver) -> None:
    port, seen = receiver
    guard = OutboundGuard(resolver=_resolver({"rebind.test": ["127.0.0.1"]}))
    async with guard.client(timeout=5) as client:
        with pytest.raises(UnsafeRequest, match="rebind.test does not resolve"):
            await client.get(f"http://rebind.test:{port}/hook")
    assert seen == []


async def test_guarded_client_does_not_follow_redirects(receiver) -> None:
    port, seen = receiver
    guard = OutboundGuard(["127.0.0.1/32"])
    async with guard.client(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{port}/redirect")
    assert response.status_code == 302
    assert response.headers["location"].startswith("http://169.254.169.254/")


async def test_guarded_client_refuses_non_http_schemes_before_any_io() -> None:
    guard = OutboundGuard(["0.0.0.0/0"])
    async with guard.client(timeout=5) as client:
        with pytest.raises((UnsafeRequest, httpx.UnsupportedProtocol)):
            await asyncio.wait_for(client.get("ftp://127.0.0.1/x"), 5)


@pytest.mark.parametrize(
    "url",
    [
        "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/x.png",
        "http://a\ud800b.example/",
        "http://\uff45x.com/",
    ],
)
def test_hosts_the_http_client_would_refuse_are_refused_as_unsafe(url: str) -> None:
    with pytest.raises(UnsafeUrl, match="malformed"):
        OutboundGuard(["0.0.0.0/0"]).check_url(url)


async def _backends() -> list[str]:
    return ["http://127.0.0.1:8188", "http://comfy.internal:8188", "https://10.9.8.7"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8188/interrupt",
        "http://localhost:8188/view?filename=x.png",
        "http://127.0.0.2:8188/",  # a backend listening on every interface answers here too
        "http://0.0.0.0:8188/",
        "http://[::ffff:127.0.0.1]:8188/",
        "http://[::1]:8188/",
        "http://COMFY.internal:8188/",
        "http://alias.internal:8188/",  # another name for the backend's address
        "https://10.9.8.7/",
    ],
)
async def test_backends_are_never_reached_whatever_the_allowlist_says(url: str) -> None:
    table = {"localhost": ["127.0.0.1"], "comfy.internal": ["10.0.0.4"], "alias.internal": ["10.0.0.4"]}
    guard = OutboundGuard(
        ["0.0.0.0/0", "::/0", "comfy.internal", "alias.internal"],
        resolver=_resolver(table),
        forbidden=_backends,
    )
    with pytest.raises(UnsafeUrl, match="may not be reached"):
        await guard.resolve(url)
    with pytest.raises(UnsafeUrl, match="may not be reached"):
        await guard.accept(url)


async def test_other_ports_of_a_backends_host_stay_reachable_when_allow_listed() -> None:
    guard = OutboundGuard(["127.0.0.0/8"], forbidden=_backends)
    assert [str(a) for a in await guard.resolve("http://127.0.0.1:9000/hook")] == ["127.0.0.1"]
    assert await guard.accept("http://127.0.0.1:9000/hook") == "http://127.0.0.1:9000/hook"


async def test_a_backend_added_after_the_guard_was_built_is_refused_too(receiver) -> None:
    port, seen = receiver
    pool: list[str] = []

    async def forbidden() -> list[str]:
        return pool

    guard = OutboundGuard(["127.0.0.1/32"], forbidden=forbidden)
    async with guard.client(timeout=5) as client:
        assert (await client.get(f"http://127.0.0.1:{port}/hook")).status_code == 200
        pool.append(f"http://127.0.0.1:{port}")
        with pytest.raises(UnsafeRequest, match="may not be reached"):
            await client.get(f"http://127.0.0.1:{port}/hook")
    assert len(seen) == 1
