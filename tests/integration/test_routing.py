"""Routing by capability: a job goes only where its nodes and model files are."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from comfy_emulator import Emulator, EmulatorConfig

ALL_NODES = set(
    json.loads((Path(__file__).parents[2] / "comfy_emulator" / "data" / "object_info_full.json").read_text())
)


@pytest.fixture
async def two_backends() -> AsyncIterator[tuple[Emulator, Emulator]]:
    # "plain" lacks ImageInvert and has checkpoint a; "full" has every node and checkpoint b.
    plain = Emulator(
        EmulatorConfig(node_allowlist=ALL_NODES - {"ImageInvert"}, models={"checkpoints": ["a.safetensors"]})
    )
    full = Emulator(EmulatorConfig(models={"checkpoints": ["b.safetensors"]}))
    for emu in (plain, full):
        await emu.start(host="127.0.0.1", port=0)
    yield plain, full
    for emu in (plain, full):
        await emu.stop()


async def test_jobs_go_only_to_backends_that_can_run_them(
    two_backends, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    plain, full = two_backends
    gw = await gateway_factory(make_settings(comfyui_urls=[plain.base_url, full.base_url]))
    await gw.wait_ready()

    # resize needs ImageInvert: only "full" has it.
    resize = [
        (await gw.generate({"template": "resize", "params": {"width": 32, "height": 32}})).json()["id"]
        for _ in range(6)
    ]
    # txt2img with checkpoint a: only "plain" has that file; with b: only "full".
    on_a = [
        (
            await gw.generate(
                {"template": "txt2img", "params": {"prompt": "x", "steps": 1, "checkpoint": "a.safetensors"}}
            )
        ).json()["id"]
        for _ in range(3)
    ]
    on_b = [
        (
            await gw.generate(
                {"template": "txt2img", "params": {"prompt": "x", "steps": 1, "checkpoint": "b.safetensors"}}
            )
        ).json()["id"]
        for _ in range(3)
    ]
    # A model no backend has: fails at once, naming what is missing.
    nowhere = (
        await gw.generate({"template": "txt2img", "params": {"prompt": "x", "checkpoint": "c.safetensors"}})
    ).json()["id"]

    finals = {j: await gw.wait(j) for j in resize + on_a + on_b + [nowhere]}
    assert all(finals[j]["status"] == "succeeded" for j in resize + on_a + on_b)
    async with gw.state.sessionmaker() as session:
        from app.db.models import Job

        backend_of = {j: (await session.get(Job, j)).backend for j in finals}
    assert {backend_of[j] for j in resize} == {full.base_url}
    assert {backend_of[j] for j in on_a} == {plain.base_url}
    assert {backend_of[j] for j in on_b} == {full.base_url}

    err = finals[nowhere]["error"]
    assert finals[nowhere]["status"] == "failed" and err["type"] == "unsupported_workflow"
    assert "c.safetensors" in err["message"] and finals[nowhere]["attempts"] == 0


async def test_a_job_waits_with_a_reason_while_its_only_capable_backend_is_down(
    two_backends, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    plain, full = two_backends
    gw = await gateway_factory(make_settings(comfyui_urls=[plain.base_url, full.base_url]))
    await gw.wait_ready()
    await full.kill()
    while gw.dispatcher.backend_health()[full.base_url]:
        await asyncio.sleep(0.02)
    job = (await gw.generate({"template": "resize", "params": {"width": 32, "height": 32}})).json()
    deadline = time.monotonic() + 10
    while (current := await gw.job(job["id"]))["waiting_reason"] is None:
        assert time.monotonic() < deadline, current
        await asyncio.sleep(0.05)
    assert current["status"] == "queued" and "ImageInvert" in current["waiting_reason"]
    assert plain.prompts_received == []  # never sent where it cannot run
    await full.revive()
    final = await gw.wait(job["id"], timeout=20)
    assert final["status"] == "succeeded" and final["waiting_reason"] is None
