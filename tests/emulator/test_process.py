"""`python -m comfy_emulator` as a process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from .helpers import CLIENT_A, WsClient

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
async def process(tmp_path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:  # type: ignore[no-untyped-def]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comfy_emulator", "--host", "127.0.0.1", "--port", "0", "--step-seconds", "0.01",
        "--output-dir", str(tmp_path / "out"), "--models", json.dumps({"checkpoints": ["a.safetensors"]}),
        cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    assert line.startswith("comfy-emulator listening on http://127.0.0.1:"), line
    try:
        yield proc, line.split()[-1]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_process_serves_and_stops_on_sigterm(process, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, base = process
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/system_stats") as r:
            assert r.status == 200 and (await r.json())["system"]["comfyui_version"] == "0.3.64"
        async with http.get(base + "/models/checkpoints") as r:
            assert await r.json() == ["a.safetensors"]
        ws = await WsClient.connect(http, base, CLIENT_A)
        body = {
            "prompt": {
                "1": {
                    "class_type": "EmptyImage",
                    "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
                },
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "proc"}},
            },
            "client_id": CLIENT_A,
        }
        async with http.post(base + "/prompt", json=body) as r:
            pid = (await r.json())["prompt_id"]
        await ws.wait_done(pid)
        assert (tmp_path / "out" / "proc_00001_.png").exists()
        # kill over HTTP, then SIGUSR1 brings it back on the same port
        async with http.post(base + "/emulator/kill") as r:
            assert r.status == 200
        await ws.wait_for(lambda f: ws.closed, 5)
    with pytest.raises(aiohttp.ClientConnectorError):
        async with aiohttp.ClientSession() as http:
            await http.get(base + "/queue")
    proc.send_signal(signal.SIGUSR1)
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            try:
                async with http.get(base + "/history") as r:
                    assert await r.json() == {}
                    break
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("did not come back after SIGUSR1")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0
