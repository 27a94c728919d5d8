"""The emulator under a burst, and with a long history: every job still gets its messages and files.

How fast it drains such a burst is a figure, not a pass/fail test: `python bench/throughput.py
--job-ms 0` prints it ("direct to emulator"). The workload is the one of the recorded ComfyUI benchmark (timings.json): EmptyImage(8x8) ->
HarnessSlowSampler(steps=1, seconds_per_step=0) -> PreviewImage, unique prompts, one client
socket. ComfyUI itself drained about 180-200 such jobs/s on the recording machine.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from comfy_emulator import Emulator

from .helpers import recording


def job(i: int) -> dict[str, Any]:
    return {
        "prompt": {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": i},
            },
            "2": {
                "class_type": "HarnessSlowSampler",
                "inputs": {"image": ["1", 0], "steps": 1, "seconds_per_step": 0},
            },
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
        },
        "client_id": "bench",
    }


async def test_a_burst_of_200_instant_jobs_each_gets_every_message_and_file(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    n = 200
    ws = await http.ws_connect(emu.ws_url + "?clientId=bench")
    await ws.receive()
    done: set[str] = set()
    all_done = asyncio.Event()
    count = 0

    async def read() -> None:
        nonlocal count
        async for msg in ws:
            count += 1
            data = json.loads(msg.data)
            if data["type"] == "executing" and data["data"]["node"] is None:
                done.add(data["data"]["prompt_id"])
                if len(done) == n:
                    all_done.set()

    reader = asyncio.get_running_loop().create_task(read())
    sem = asyncio.Semaphore(8)

    async def post(i: int) -> None:
        async with sem, http.post(emu.base_url + "/prompt", json=job(i)) as r:
            assert r.status == 200

    await asyncio.gather(*(post(i) for i in range(n)))
    await asyncio.wait_for(all_done.wait(), 120)
    reader.cancel()
    await ws.close()
    recorded = recording("timings.json")["throughput_200_unique"]
    assert count / n == recorded["ws_messages_per_job"] == 19.0
    assert len(list(emu.temp_dir.iterdir())) == n


async def test_lookups_in_a_long_history(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """One prompt's history and the newest few are found among 10,000 entries."""
    from comfy_emulator.execution import ServerState

    state: ServerState = emu.state
    for i in range(10000):
        state.queue.history[f"id-{i}"] = {
            "prompt": [i, f"id-{i}", {}, {}, []],
            "outputs": {},
            "status": None,
            "meta": {},
        }
    async with http.get(emu.base_url + "/history/id-5000") as r:
        assert r.status == 200
        assert list(await r.json()) == ["id-5000"]
        async with http.get(emu.base_url + "/history?max_items=5") as r:
            assert list(await r.json()) == [f"id-{i}" for i in range(9995, 10000)]
