"""Webhook delivery: latency from a job's end to its receiver, and what webhooks cost the job path.

    python bench/webhooks.py [--jobs 200] [--sequential 50] [--database-url ...]

The emulator and the gateway run as separate processes; a receiver (aiohttp, answering 200) runs in
this one, on loopback, allow-listed. Figures:
- sequential: one job at a time with a webhook; latency from the job's `finished_at` (the gateway's
  row, in the payload) to the receiver having the whole request; same machine, same clock;
- burst: N instant jobs at once, without webhooks and then with one each (job.running and
  job.succeeded: two deliveries a job); jobs/s to the last job finished, and for the webhook run
  the time until the last delivery arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import tempfile
import time
from contextlib import suppress
from datetime import datetime
from pathlib import Path

import httpx
from aiohttp import web
from harness import ADMIN_KEY, free_port, gateway_env, pct, start_emulator, start_gateway, stop, wait_http
from throughput import workflow


class Receiver:
    def __init__(self) -> None:
        self.arrivals: list[tuple[float, dict]] = []
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.arrivals.append((time.time(), json.loads(body)))
        self.changed.set()
        return web.Response(text="ok")

    async def wait_count(self, n: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < n:
            self.changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=max(0.01, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                kinds = collections.Counter(p["type"] for _, p in self.arrivals)
                raise RuntimeError(f"only {len(self.arrivals)} of {n} deliveries arrived: {dict(kinds)}")


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def wait_jobs(client: httpx.AsyncClient, ids: list[str]) -> float:
    """Until every job ended; returns the latest finished_at."""
    pending = set(ids)
    latest = 0.0
    while pending:
        for job_id in list(pending)[:50]:
            job = (await client.get(f"/v1/jobs/{job_id}")).json()
            if job["status"] in ("succeeded", "failed", "canceled"):
                pending.discard(job_id)
                latest = max(latest, ts(job["finished_at"]))
        await asyncio.sleep(0.05)
    return latest


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--sequential", type=int, default=50)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()

    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    rec_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", rec_port).start()
    hook = f"http://127.0.0.1:{rec_port}/hook"

    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    emu_port, gw_port = free_port(), free_port()
    emu_base, gw_base = f"http://127.0.0.1:{emu_port}", f"http://127.0.0.1:{gw_port}"
    env = gateway_env(tmp, [emu_base], args.database_url, outbound_allowlist="127.0.0.1")
    procs = [start_emulator(emu_port, env), start_gateway(gw_port, env)]
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        await wait_http(f"{emu_base}/system_stats")
        await wait_http(f"{gw_base}/readyz")
        async with httpx.AsyncClient(base_url=gw_base, headers=headers, timeout=60) as client:

            async def submit(i: int, webhook: dict | None) -> str:
                body: dict = {"workflow": workflow(i, 0)}
                if webhook:
                    body["webhook"] = webhook
                resp = await client.post("/v1/generate", json=body)
                assert resp.status_code == 202, resp.text
                return resp.json()["id"]

            # Warm up (imports, connections, the first secret).
            await wait_jobs(client, [await submit(9_000_000, {"url": hook})])
            await receiver.wait_count(1)

            # One at a time: job end -> receiver.
            latencies = []
            for i in range(args.sequential):
                before = len(receiver.arrivals)
                await submit(i, {"url": hook})
                await receiver.wait_count(before + 1)
                arrived, payload = receiver.arrivals[-1]
                latencies.append(arrived - ts(payload["data"]["finished_at"]))

            # Bursts: without webhooks, then with two deliveries a job.
            start = time.time()
            ids = await asyncio.gather(*(submit(1_000_000 + i, None) for i in range(args.jobs)))
            plain_rate = args.jobs / (await wait_jobs(client, list(ids)) - start)

            before = len(receiver.arrivals)
            start = time.time()
            events = {"url": hook, "events": ["job.running", "job.succeeded"]}
            ids = await asyncio.gather(*(submit(2_000_000 + i, events) for i in range(args.jobs)))
            hooked_rate = args.jobs / (await wait_jobs(client, list(ids)) - start)
            await receiver.wait_count(before + 2 * args.jobs)
            burst_arrivals = receiver.arrivals[before:]
            last_delivery = max(t for t, _ in burst_arrivals) - start
            burst_lat = [
                t - ts(p["data"]["finished_at"]) for t, p in burst_arrivals if p["type"] == "job.succeeded"
            ]
            ids_seen = [p["data"]["id"] + p["type"] for _, p in burst_arrivals]
    finally:
        stop(procs)
        await runner.cleanup()

    db = "sqlite" if args.database_url is None else args.database_url.split(":", 1)[0]
    print(f"\nwebhooks, 1 emulated backend, instant jobs, {db}")
    print(f"{args.sequential} jobs one at a time: job finished_at -> delivery received (ms)")
    print(
        f"  p50 {pct(latencies, 0.5) * 1000:7.1f}  p95 {pct(latencies, 0.95) * 1000:7.1f}  p99 {pct(latencies, 0.99) * 1000:7.1f}  max {max(latencies) * 1000:7.1f}"
    )
    print(
        f"burst of {args.jobs} jobs: without webhooks {plain_rate:6.1f} jobs/s, with 2 webhooks a job {hooked_rate:6.1f} jobs/s"
    )
    print(
        f"  all {len(burst_arrivals)} deliveries received {last_delivery:5.2f} s after the first submit; duplicates: {len(ids_seen) - len(set(ids_seen))}"
    )
    print(
        f"  job.succeeded finished_at -> received (ms): p50 {pct(burst_lat, 0.5) * 1000:7.1f}  p99 {pct(burst_lat, 0.99) * 1000:7.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
