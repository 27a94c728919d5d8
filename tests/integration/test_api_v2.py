"""Comfy API v2 under /api/v2, driven by the official comfy-sdk (unmodified) against the real
gateway: emulated backends on loopback, two users, the same jobs as /v1."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from comfy_sdk import AsyncComfy
from comfy_sdk.events import OutputReady, Progress, StatusChange
from comfy_sdk.exceptions import ComfyError, Forbidden, IdempotencyKeyReuse, MissingAsset, NotFound, WorkflowFormatUi
from PIL import Image

from tests.integration.conftest import Gateway

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

BLUR = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "v2"}},
}


def sampler(steps: int, seed: int = 1) -> dict[str, Any]:
    """The stock txt2img graph: the emulator's KSampler takes `step_seconds` per step."""
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
              "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "v2", "images": ["8", 0]}},
    }


def png(color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buf, "PNG")
    return buf.getvalue()


async def sdk_user(gw: Gateway, name: str, monkeypatch: pytest.MonkeyPatch, **limits: Any) -> tuple[AsyncComfy, dict[str, str]]:
    """A user allowed raw workflows, and an SDK client configured the documented way
    (COMFY_BASE_URL, the gateway key as api_key)."""
    _, headers = await gw.create_user(name, limits={"allow_raw_workflows": True, **limits})
    monkeypatch.setenv("COMFY_BASE_URL", gw.base_url)
    return AsyncComfy(api_key=headers["Authorization"].removeprefix("Bearer ")), headers


@SQLITE_ONLY
async def test_run_submit_events_outputs_and_the_same_job_on_v1(gateway: Gateway, monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    client, headers = await sdk_user(gateway, "alice", monkeypatch)
    other, _ = await sdk_user(gateway, "bob", monkeypatch)
    async with client, other:
        done = await client.run(client.workflows.from_json(BLUR))
        assert done.status == "succeeded"
        [out] = done.outputs
        assert out.type == "image" and out.content_type == "image/png" and out.node_id == "3"
        data = await out.to_bytes()
        assert data.startswith(b"\x89PNG") and len(data) == out.size_bytes
        assert await out.to_bytes(range=(1, 3)) == data[1:4]
        path = await out.to_file(tmp_path / "out.png")
        assert path.read_bytes() == data

        # The same job through /v1, in the same state, with the same output.
        v1 = await gateway.job(done.id, headers)
        assert v1["status"] == "succeeded" and [o["id"] for o in v1["outputs"]] == [out.id]

        # submit + events to the end + wait + result
        job = await client.submit(client.workflows.from_json(sampler(6)), metadata={"run": "events"})
        events = [ev async for ev in job.events()]
        kinds = [type(ev).__name__ for ev in events]
        assert isinstance(events[0], StatusChange) and isinstance(events[-1], StatusChange)
        assert events[-1].status == "succeeded"
        outputs = [ev for ev in events if isinstance(ev, OutputReady)]
        assert len(outputs) == 1 and kinds.index("OutputReady") < len(kinds) - 1
        progress = [ev for ev in events if isinstance(ev, Progress)]
        assert progress and all(0 <= p.value <= 1 for p in progress)
        assert any(p.nodes_total == 7 and p.current_node == "3" and p.steps == 6 for p in progress)
        await job.wait()
        assert (await job.result()).status == "succeeded" and job.metadata == {"run": "events"}
        assert (await job.get_workflow()).graph["3"]["class_type"] == "KSampler"

        # Another user's job is not found, as in v1.
        with pytest.raises(NotFound):
            await other.jobs.get(job.id)
