"""A WebSocket that stalls silently never leaves a job hanging."""

from __future__ import annotations

import hashlib


async def test_jobs_finish_from_history_while_the_socket_is_stalled(
    emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    gw = await gateway_factory(make_settings(comfyui_urls=[emulator.base_url], ws_ping_seconds=0.3))
    await gw.wait_ready()
    emulator.stall_websockets(True)  # sockets stay open, say nothing, answer no pings
    try:
        job = (await gw.generate({"template": "blur", "params": {"width": 16, "height": 16}})).json()
        final = await gw.wait(job["id"], timeout=15)
        assert final["status"] == "succeeded"
        out = final["outputs"][0]
        data = (await gw.http.get(out["url"])).content
        assert hashlib.sha256(data).hexdigest() == out["sha256"]
        assert len(emulator.executed_prompts) == 1
        # It finished through /history: the gateway had found the socket dead by then.
        assert not gw.dispatcher.links[0].connected
    finally:
        emulator.stall_websockets(False)
