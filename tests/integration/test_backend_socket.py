"""The gateway's socket to a backend bounds what one message may hold."""

from __future__ import annotations

import logging

import pytest

from comfy_emulator import Emulator
from tests.integration.conftest import Gateway


async def test_a_backend_message_over_the_limit_drops_the_socket_and_the_job_still_finishes(
    emulator: Emulator,
    make_settings,
    gateway_factory,
    caplog: pytest.LogCaptureFixture,  # noqa: ANN001
) -> None:
    # Each sampler step sends a JPEG preview of the image (512x512: tens of kilobytes), far over 1 KiB.
    gateway: Gateway = await gateway_factory(
        make_settings(comfyui_urls=[emulator.base_url], backend_ws_max_message_bytes=1024)
    )
    await gateway.wait_ready()
    caplog.set_level(logging.WARNING, logger="app.dispatch")
    body = {
        "template": "txt2img",
        "params": {"prompt": "a lighthouse", "steps": 3, "width": 512, "height": 512},
    }
    job = (await gateway.generate(body)).json()
    # Counted as a lost socket (the client closes it with 1009, message too big), then reconnected;
    # what was missed meanwhile is read back from the backend, so the job is not lost.
    assert (await gateway.wait(job["id"], timeout=60))["status"] == "succeeded"
    drops = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lost the socket of")]
    assert any("1009" in line for line in drops), drops
    await gateway.wait_ready()
