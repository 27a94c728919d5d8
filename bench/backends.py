"""Keeping several GPUs busy: N jobs of fixed length spread over B emulated backends.

    python bench/backends.py [--jobs 200] [--job-ms 200] [--backends 4] [--inflight 2]

Starts B emulators and the gateway as separate processes, submits every job at once, and waits
until all have succeeded. Prints:
- makespan (first submit to last job finished) against the ideal, jobs × length / backends;
- the idle gap on each backend between one prompt ending and the next starting, p50/p95/max,
  read from the backends' own /history (ComfyUI's execution_start / execution_success
  timestamps), so it is measured on the backend's clock, not the gateway's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from harness import ADMIN_KEY, free_port, gateway_env, pct, start_emulator, start_gateway, stop, wait_http  # noqa: E402
from throughput import workflow  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--job-ms", type=float, default=200.0)
    parser.add_argument("--backends", type=int, default=4)
    parser.add_argument("--inflight", type=int, default=2)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    ports = [free_port() for _ in range(args.backends)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    gw_port = free_port()
    base = f"http://127.0.0.1:{gw_port}"
    env = gateway_env(tmp, urls, args.database_url, max_inflight_per_backend=args.inflight)
    procs = [start_emulator(p, env) for p in ports]
    procs.append(start_gateway(gw_port, env))
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        for url in urls:
            await wait_http(f"{url}/system_stats")
        await wait_http(f"{base}/readyz")
        await asyncio.sleep(1.0)  # every backend connected and its node list read
        async with httpx.AsyncClient(
            base_url=base, timeout=60, limits=httpx.Limits(max_connections=50)
        ) as client:
            t0 = time.perf_counter()
            wall0 = time.time()
            responses = await asyncio.gather(
                *(
                    client.post("/v1/generate", json={"workflow": workflow(i, args.job_ms)}, headers=headers)
                    for i in range(args.jobs)
                )
            )
            ids = {r.raise_for_status().json()["id"] for r in responses}
            submitted = time.perf_counter() - t0
            done: dict[str, float] = {}
            while len(done) < len(ids):
                await asyncio.sleep(0.05)
                cursor = None
                while True:
                    page = (
                        await client.get(
                            "/v1/jobs?status=succeeded,failed,canceled&limit=100"
                            + (f"&cursor={cursor}" if cursor else ""),
                            headers=headers,
                        )
                    ).json()
                    for job in page["items"]:
                        if job["id"] in ids and job["id"] not in done:
                            if job["status"] != "succeeded":
                                raise RuntimeError(f"job {job['id']} {job['status']}: {job['error']}")
                            done[job["id"]] = time.perf_counter()
                    cursor = page["next_cursor"]
                    if cursor is None:
                        break
            makespan = max(done.values()) - t0

        gaps: list[float] = []
        per_backend: list[int] = []
        busy: list[float] = []
        # Where the time beyond the ideal goes: before each backend's first start, after its last end.
        first_start: list[float] = []
        last_end: list[float] = []
        long_gaps: list[tuple[float, float]] = []
        async with httpx.AsyncClient(timeout=60) as client:
            for url in urls:
                history = (await client.get(f"{url}/history")).json()
                spans = []
                for entry in history.values():
                    msgs = dict((m[0], m[1]) for m in entry["status"]["messages"])
                    if "execution_start" in msgs and "execution_success" in msgs:
                        spans.append(
                            (msgs["execution_start"]["timestamp"], msgs["execution_success"]["timestamp"])
                        )
                spans.sort()
                if spans:
                    first_start.append(spans[0][0] / 1000 - wall0)
                    last_end.append(spans[-1][1] / 1000 - wall0)
                per_backend.append(len(spans))
                busy.append(sum(b - a for a, b in spans) / 1000)
                gaps += [(b[0] - a[1]) for a, b in zip(spans, spans[1:])]
                long_gaps += [
                    (a[1] / 1000 - wall0, b[0] - a[1]) for a, b in zip(spans, spans[1:]) if b[0] - a[1] > 20
                ]
    finally:
        stop(procs)

    ideal = args.jobs * args.job_ms / 1000 / args.backends
    print(
        f"\n{args.jobs} jobs of {args.job_ms:g} ms on {args.backends} emulated backends, {args.inflight} in flight each"
    )
    print(f"  submitted in       : {submitted:7.2f} s")
    print(f"  makespan           : {makespan:7.2f} s   ideal {ideal:.2f} s   ratio {makespan / ideal:.3f}")
    print(f"  jobs per backend   : {per_backend}")
    print(
        f"  busy per backend   : {', '.join(f'{b:.2f}' for b in busy)} s (sum of execution spans; a job's real"
        f" length includes the emulator's own work)  makespan / busiest = {makespan / max(busy):.3f}"
    )
    print(
        f"  idle gap (ms)      : p50 {pct(gaps, 0.5):.1f}  p95 {pct(gaps, 0.95):.1f}  max {max(gaps) if gaps else float('nan'):.1f}"
        "   (backend clock: execution_success to next execution_start)"
    )
    print(
        f"  gaps over 20 ms    : {', '.join(f'{ms:.0f} ms at {at:.2f} s' for at, ms in sorted(long_gaps)) or 'none'}"
    )
    print(
        f"  first start (s)    : {', '.join(f'{v:.3f}' for v in first_start)}   after the first submit (wall clock)"
    )
    print(
        f"  last end (s)       : {', '.join(f'{v:.3f}' for v in last_end)}   spread {max(last_end) - min(last_end):.3f} s;"
        f" last job seen done {makespan - max(last_end):.3f} s after the last end"
    )


if __name__ == "__main__":
    asyncio.run(main())
