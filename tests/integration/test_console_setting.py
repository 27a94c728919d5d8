"""GATEWAY_CONSOLE_ENABLED: the console's page is served by default and not at all when it is off."""

from __future__ import annotations


async def test_console_is_served_unless_turned_off(idle_gateway) -> None:  # noqa: ANN001
    on = await idle_gateway()
    assert (await on.http.get("/console")).status_code == 200
    off = await idle_gateway(console_enabled=False)
    for path in ("/console", "/console/main.js"):
        resp = await off.http.get(path)
        assert resp.status_code == 404
        assert resp.headers["content-type"] == "application/problem+json"
