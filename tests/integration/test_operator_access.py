"""/metrics and /readyz hold operator data (user ids, backend URLs): only an operator sees it."""

from __future__ import annotations

import asyncio
import time

from comfy_emulator import Emulator
from tests.integration.conftest import ADMIN_KEY, Gateway, metric_sum

SCRAPE_TOKEN = "scrape-token-0123456789-abcdef"


async def _user_with_a_job(gw: Gateway) -> tuple[str, dict[str, str]]:
    user_id, headers = await gw.create_user("alice")
    body = {
        "template": "txt2img",
        "params": {"prompt": "a lighthouse", "steps": 1, "width": 64, "height": 64},
    }
    assert (await gw.generate(body, headers)).status_code == 202
    return user_id, headers


async def test_metrics_need_the_scrape_token_or_an_admin_key(
    emulator: Emulator,
    make_settings,
    gateway_factory,  # noqa: ANN001
) -> None:
    gw: Gateway = await gateway_factory(
        make_settings(comfyui_urls=[emulator.base_url], metrics_token=SCRAPE_TOKEN)
    )
    user_id, alice = await _user_with_a_job(gw)
    for headers in (
        {},
        {"Authorization": "Bearer not-the-token"},
        {"Authorization": f"Basic {SCRAPE_TOKEN}"},
    ):
        refused = await gw.http.get("/metrics", headers=headers)
        assert refused.status_code == 401, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert user_id not in refused.text and emulator.base_url not in refused.text
    # A user's own key is not an operator's.
    forbidden = await gw.http.get("/metrics", headers=alice)
    assert forbidden.status_code == 403 and user_id not in forbidden.text
    for headers in ({"Authorization": f"Bearer {SCRAPE_TOKEN}"}, gw.admin):
        scraped = await gw.http.get("/metrics", headers=headers)
        assert scraped.status_code == 200, scraped.text
        assert metric_sum(scraped.text, "gateway_jobs_submitted_total", user=user_id) == 1
    # An admin user's key (not only the bootstrap one) scrapes too.
    _, admin = await gw.create_user("ops", is_admin=True)
    assert (await gw.http.get("/metrics", headers=admin)).status_code == 200
    # /healthz stays open.
    assert (await gw.http.get("/healthz")).status_code == 200


async def test_metrics_can_be_made_public_where_the_port_is_private(idle_gateway) -> None:  # noqa: ANN001
    gw: Gateway = await idle_gateway(metrics_public=True)
    resp = await gw.http.get("/metrics")
    assert resp.status_code == 200 and "gateway_jobs_submitted_total" in resp.text


async def test_readyz_tells_anonymous_callers_ready_or_not_and_operators_the_detail(
    emulator: Emulator,
    make_settings,
    gateway_factory,  # noqa: ANN001
) -> None:
    gw: Gateway = await gateway_factory(
        make_settings(comfyui_urls=[emulator.base_url], metrics_token=SCRAPE_TOKEN)
    )
    await gw.wait_ready()
    user_id, alice = await _user_with_a_job(gw)
    for headers in ({}, alice, {"Authorization": "Bearer wrong"}):
        ready = await gw.http.get("/readyz", headers=headers)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "backends_healthy": 1}
        assert emulator.base_url not in ready.text and user_id not in ready.text
    for headers in (gw.admin, {"Authorization": f"Bearer {SCRAPE_TOKEN}"}):
        detail = await gw.http.get("/readyz", headers=headers)
        assert detail.status_code == 200 and detail.json()["backends"] == {emulator.base_url: True}
    await emulator.kill()
    deadline = time.monotonic() + 20
    while gw.dispatcher.backend_health()[emulator.base_url]:
        assert time.monotonic() < deadline, "the killed backend still counts as healthy"
        await asyncio.sleep(0.05)
    down = await gw.http.get("/readyz")
    assert down.status_code == 503 and down.headers["content-type"].startswith("application/problem+json")
    assert "no ComfyUI backend is healthy" in down.json()["detail"] and down.json()["backends_healthy"] == 0
    assert emulator.base_url not in down.text
    detailed = await gw.http.get("/readyz", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert detailed.status_code == 503 and emulator.base_url in detailed.json()["detail"]
