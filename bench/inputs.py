"""Uploads and staging: how fast a large input goes in, and what it costs the gateway's memory.

    python bench/inputs.py [--mb 16] [--jobs 20]

Starts one emulated backend and the gateway as separate processes. Uploads a PNG of about --mb MB
(random pixels, so it does not compress) with POST /v1/uploads, sampling the gateway process's
resident memory (/proc/<pid>/status VmRSS) every 10 ms meanwhile; then submits --jobs img2img jobs
using it, each staged onto the backend (its own file), and waits for all. Prints the upload rate,
the gateway's RSS growth during the upload, and the jobs' makespan with the bytes staged per second.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from harness import ADMIN_KEY, free_port, gateway_env, rss_kb, start_emulator, start_gateway, stop, wait_http  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=16)
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()

    side = int((args.mb * 1024 * 1024 / 3) ** 0.5)
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(
        buf, format="PNG", compress_level=0
    )
    data = buf.getvalue()
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    source = tmp / "input.png"
    source.write_bytes(data)

    emu_port, gw_port = free_port(), free_port()
    base = f"http://127.0.0.1:{gw_port}"
    env = gateway_env(
        tmp, [f"http://127.0.0.1:{emu_port}"], max_upload_bytes=len(data) + 1024, max_image_pixels=side * side
    )
    procs = [start_emulator(emu_port, env), start_gateway(gw_port, env)]
    gateway_pid = procs[1].pid
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        await wait_http(f"http://127.0.0.1:{emu_port}/system_stats")
        await wait_http(f"{base}/readyz")
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient(base_url=base, timeout=300) as client:
            before = rss_kb(gateway_pid)
            peak = before
            sampling = True

            async def sample() -> None:
                nonlocal peak
                while sampling:
                    peak = max(peak, rss_kb(gateway_pid))
                    await asyncio.sleep(0.01)

            sampler = asyncio.create_task(sample())
            t0 = time.perf_counter()
            with source.open("rb") as fh:
                resp = await client.post(
                    "/v1/uploads", files={"file": ("input.png", fh, "image/png")}, headers=headers
                )
            upload_s = time.perf_counter() - t0
            sampling = False
            await sampler
            upload = resp.raise_for_status().json()

            t0 = time.perf_counter()
            body = {"template": "img2img", "params": {"image": upload["id"], "prompt": "x", "steps": 1}}
            ids = [
                (await client.post("/v1/generate", json=body, headers=headers))
                .raise_for_status()
                .json()["id"]
                for _ in range(args.jobs)
            ]
            pending = set(ids)
            while pending:
                await asyncio.sleep(0.05)
                for job_id in list(pending):
                    job = (await client.get(f"/v1/jobs/{job_id}", headers=headers)).json()
                    if job["status"] in ("succeeded", "failed", "canceled"):
                        if job["status"] != "succeeded":
                            raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
                        pending.discard(job_id)
            makespan = time.perf_counter() - t0
    finally:
        stop(procs)

    mb = len(data) / 1024 / 1024
    print(f"\nupload of a {mb:.1f} MB PNG ({side}x{side})")
    print(
        f"  upload time        : {upload_s:7.2f} s   ({mb / upload_s:.1f} MB/s, sniffed, hashed and stored)"
    )
    print(
        f"  gateway RSS        : {before / 1024:.1f} MB before, peak {peak / 1024:.1f} MB during (+{(peak - before) / 1024:.1f} MB)"
    )
    print(f"{args.jobs} img2img jobs staging it onto one emulated backend (2 in flight)")
    print(
        f"  makespan           : {makespan:7.2f} s   ({args.jobs * mb / makespan:.1f} MB/s staged; includes decoding and sampling in the emulator)"
    )


if __name__ == "__main__":
    asyncio.run(main())
