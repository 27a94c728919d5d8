"""Backend health: the socket or /system_stats; down after repeated failed checks; back when it answers."""

from __future__ import annotations

import asyncio
import time

BLUR = {"template": "blur", "params": {"width": 16, "height": 16}}


async def until(predicate, timeout: float = 10) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_a_backend_whose_socket_is_refused_but_http_answers_still_runs_jobs(
    emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    gw = await gateway_factory(make_settings(comfyui_urls=[emulator.base_url], health_check_seconds=0.1))
    await gw.wait_ready()
    emulator.refuse_websockets(True)
    emulator.drop_websockets()
    await until(lambda: not gw.dispatcher.links[0].connected)
    assert gw.dispatcher.backend_health() == {emulator.base_url: True}
    assert (await gw.http.get("/readyz")).status_code == 200
    job = (await gw.generate(BLUR)).json()
    final = await gw.wait(job["id"], timeout=15)  # followed over HTTP: /queue and /history
    assert final["status"] == "succeeded" and len(final["outputs"]) == 1
    emulator.refuse_websockets(False)


async def test_repeated_failed_checks_mark_a_backend_down_until_it_answers(
    emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    gw = await gateway_factory(
        make_settings(comfyui_urls=[emulator.base_url], health_check_seconds=0.1, health_failures=3)
    )
    await gw.wait_ready()
    emulator.error_responses("/system_stats", status=500)
    # The socket is still up, but three checks in a row failed: no work goes there.
    await until(lambda: gw.dispatcher.links[0].check_failures >= 3)
    assert gw.dispatcher.links[0].connected
    assert gw.dispatcher.backend_health() == {emulator.base_url: False}
    ready = await gw.http.get("/readyz")
    assert ready.status_code == 503
    job = (await gw.generate(BLUR)).json()
    await asyncio.sleep(0.5)
    assert (await gw.job(job["id"]))["status"] == "queued"
    assert emulator.prompts_received == []
    emulator.clear_faults()
    final = await gw.wait(job["id"], timeout=15)
    assert final["status"] == "succeeded"
    assert (await gw.http.get("/readyz")).status_code == 200


async def test_a_replica_that_does_not_dispatch_is_ready_while_a_backend_answers(
    emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    # Such a replica follows no backend, so it asks them itself when readiness is probed.
    api_only = await gateway_factory(
        make_settings(comfyui_urls=[emulator.base_url], run_dispatcher=False, health_check_seconds=0.1)
    )
    ready = await api_only.http.get("/readyz", headers=api_only.admin)
    assert ready.status_code == 200, ready.text
    assert ready.json()["backends"] == {emulator.base_url: True}
    # Its admin view of the pool shows what it found, not "unknown".
    view = (await api_only.backends())[emulator.base_url]
    assert view["health"]["status"] == "up" and view["capabilities"]["node_classes"] > 0
    emulator.error_responses("/system_stats", status=500)
    await asyncio.sleep(0.2)
    down = await api_only.http.get("/readyz")
    assert down.status_code == 503 and "no ComfyUI backend is healthy" in down.json()["detail"]
    assert (await api_only.backends())[emulator.base_url]["health"]["status"] == "down"
    emulator.clear_faults()
    await asyncio.sleep(0.2)
    assert (await api_only.http.get("/readyz")).status_code == 200
