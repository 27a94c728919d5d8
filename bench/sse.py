"""1,000 concurrent SSE subscribers on running jobs: event latency and gateway memory.

    python bench/sse.py [--jobs 50] [--subscribers 20] [--steps 30] [--step-seconds 0.5] [--database-url ...]

Three processes, so that the subscribers' side does not share the gateway's event loop:
- the emulated backends: `--jobs` emulator instances in one process (ComfyUI runs one prompt at
  a time, so each running job needs a backend of its own), each job a HarnessSlowSampler sending
  a `progress` message every `--step-seconds`; every message sent is timestamped (time.time(),
  the emulator's `progress_hook`);
- the gateway (`comfy-gateway serve`), as deployed;
- this process: `--jobs` × `--subscribers` SSE streams (a small asyncio HTTP client: httpx would
  spend more CPU than the gateway), each `progress` event timestamped on arrival.

Latency of an event = arrival at a subscriber - the backend's send time of that progress step
(same machine, same clock). The progress rate per job stays below GATEWAY_PROGRESS_EVENTS_PER_SECOND
(default 4/s, i.e. one every 0.25 s; here one every 0.5 s), so no event waits for coalescing and
the figure is the gateway's own: WebSocket in, event log write (batched), fan-out, SSE out.
Memory: the gateway's RSS (/proc) after startup with its backends connected ("before"), and the
highest value sampled while all streams are open ("during").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    ADMIN_KEY,
    cpu_seconds,
    free_port,
    gateway_env,
    pct,
    rss_kb,
    start_gateway,
    wait_http,
)


def rss_mb(pid: int) -> float:
    return rss_kb(pid) / 1024


# ---- the emulator process ---------------------------------------------------------------------


async def serve_emulators(count: int, log_path: str) -> None:
    from comfy_emulator import Emulator, EmulatorConfig

    log = open(log_path, "w", buffering=1)  # noqa: SIM115 - open for the process's life

    def hook(prompt_id: str, node: str, value: object, maximum: object, sent_at: float) -> None:
        log.write(f"{prompt_id} {value} {sent_at:.6f}\n")

    emus = []
    for _ in range(count):
        emu = Emulator(EmulatorConfig(progress_hook=hook, sampler_previews=False))
        await emu.start(host="127.0.0.1", port=0)
        emus.append(emu)
    print(json.dumps([e.base_url for e in emus]), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for emu in emus:
        await emu.stop()
    log.close()


# ---- subscribers ------------------------------------------------------------------------------


async def subscribe(
    host: str,
    port: int,
    job_id: str,
    arrivals: list[tuple[str, int, float]],
    ready: asyncio.Event,
    counter: list[int],
    total: int,
) -> None:
    """One SSE stream, read until the server ends it; records (job, progress value, arrival)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    status = await reader.readline()
    assert b" 200 " in status, status
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    counter[0] += 1
    if counter[0] == total:
        ready.set()
    event = None
    buffer = b""
    # Chunked transfer encoding: the chunk-size lines are skipped, the event lines parsed.
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        now = time.time()
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        done = False
        for raw in lines:
            line = raw.rstrip(b"\r")
            if line.startswith(b"event:"):
                event = line[6:].strip()
            elif line.startswith(b"data:") and event is not None:
                data = json.loads(line[5:])
                if event == b"progress":
                    arrivals.append((job_id, int(data["value"]), now))
                elif event == b"status" and data["status"] in ("succeeded", "failed", "canceled"):
                    done = True
                event = None
        if done:
            break
    writer.close()
    with suppress(Exception):
        await writer.wait_closed()


def workflow(i: int, steps: int, step_seconds: float) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": i}},
        "2": {
            "class_type": "HarnessSlowSampler",
            "inputs": {"image": ["1", 0], "steps": steps, "seconds_per_step": step_seconds},
        },
        "9": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench"}},
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--subscribers", type=int, default=20, help="SSE streams per job")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--step-seconds", type=float, default=0.5)
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--lockstep",
        action="store_true",
        help="start all jobs at once, so that every job's steps come in the same instant (the worst case); "
        "by default their starts are spread over one step, as independent GPUs' steps are",
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-sse-"))
    log_path = tmp / "progress.log"
    emu_proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-emulators", str(args.jobs), str(log_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert emu_proc.stdout is not None
    urls = json.loads(emu_proc.stdout.readline())
    gw_port = free_port()
    env = gateway_env(tmp, urls, args.database_url, max_inflight_per_backend=1)
    gw_proc = start_gateway(gw_port, env)
    base = f"http://127.0.0.1:{gw_port}"
    try:
        await wait_http(f"{base}/readyz")
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60
        ) as http:
            # Every backend connected and known before the jobs go in, so each gets its own.
            deadline = time.monotonic() + 120
            while True:
                metrics = (await http.get("/metrics")).text
                up = [
                    l
                    for l in metrics.splitlines()
                    if l.startswith("gateway_backend_up{") and l.endswith(" 1.0")
                ]
                if len(up) == len(urls) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)
            rss_before = rss_mb(gw_proc.pid)
            jobs = []
            for i in range(args.jobs):
                resp = await http.post(
                    "/v1/generate", json={"workflow": workflow(i, args.steps, args.step_seconds)}
                )
                assert resp.status_code == 202, resp.text
                jobs.append(resp.json()["id"])
                if not args.lockstep:
                    await asyncio.sleep(args.step_seconds / args.jobs)

            arrivals: list[tuple[str, int, float]] = []
            ready = asyncio.Event()
            counter = [0]
            total = args.jobs * args.subscribers
            tasks = [
                asyncio.create_task(subscribe("127.0.0.1", gw_port, job_id, arrivals, ready, counter, total))
                for job_id in jobs
                for _ in range(args.subscribers)
            ]
            await asyncio.wait_for(ready.wait(), 120)
            connected_at = time.time()
            lags: list[tuple[float, float]] = []

            async def watch_own_loop() -> None:
                # This process's own delays count in the latencies: how long its loop was late.
                while True:
                    before = time.monotonic()
                    await asyncio.sleep(0.01)
                    lags.append((time.time(), (time.monotonic() - before - 0.01) * 1000))

            watcher = asyncio.create_task(watch_own_loop())
            cpu_start, wall_start = cpu_seconds(gw_proc.pid), time.monotonic()
            peak = rss_before
            while not all(t.done() for t in tasks):
                peak = max(peak, rss_mb(gw_proc.pid))
                await asyncio.sleep(0.5)
            watcher.cancel()
            gw_cpu = (cpu_seconds(gw_proc.pid) - cpu_start) / (time.monotonic() - wall_start)
            for t in tasks:
                t.result()
            prompt_of: dict[str, str] = {}
            # Which prompt ran which job: the workflow's color is the job's index.
            async with httpx.AsyncClient() as plain:
                for url in urls:
                    history = (await plain.get(f"{url}/history")).json()
                    for pid, entry in history.items():
                        color = entry["prompt"][2]["1"]["inputs"]["color"]
                        prompt_of[jobs[color]] = pid
    finally:
        for proc in (gw_proc, emu_proc):  # the gateway first: its backends going away is no news
            proc.terminate()
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)

    sent: dict[tuple[str, int], float] = {}
    for line in log_path.read_text().splitlines():
        pid, value, at = line.split()
        sent[(pid, int(value))] = float(at)
    latencies = [
        (now - sent[(prompt_of[job_id], value)]) * 1000
        for job_id, value, now in arrivals
        if job_id in prompt_of
        and (prompt_of[job_id], value) in sent
        and sent[(prompt_of[job_id], value)] >= connected_at
    ]
    print(
        f"jobs {args.jobs} x subscribers {args.subscribers} = {args.jobs * args.subscribers} SSE streams; "
        f"{args.steps} steps of {args.step_seconds} s per job, {'in lockstep' if args.lockstep else 'starts spread over a step'}"
    )
    print(f"progress events received (after all streams were open): {len(latencies)}")
    print(
        f"latency backend message -> subscriber: p50 {pct(latencies, 0.5):.1f} ms, p90 {pct(latencies, 0.9):.1f} ms, "
        f"p99 {pct(latencies, 0.99):.1f} ms, max {max(latencies, default=float('nan')):.1f} ms"
    )
    # Where the slow ones are, by second of the run.
    by_second: dict[int, list[float]] = {}
    for (job_id, value, now), lat in zip(
        [
            a
            for a in arrivals
            if a[0] in prompt_of
            and (prompt_of[a[0]], a[1]) in sent
            and sent[(prompt_of[a[0]], a[1])] >= connected_at
        ],
        latencies,
    ):
        by_second.setdefault(int(now - connected_at), []).append(lat)
    # The run has a start (1,000 streams' objects new) and an end (every job collecting its output):
    # between them, the steady state of streaming.
    last = max(by_second, default=0)
    steady = [lat for sec, lats in by_second.items() if 5 <= sec <= last - 2 for lat in lats]
    print(
        f"  steady state (from 5 s after all streams opened to 2 s before the jobs end): "
        f"p50 {pct(steady, 0.5):.1f} ms, p99 {pct(steady, 0.99):.1f} ms, max {max(steady, default=float('nan')):.1f} ms"
    )
    if os.environ.get("BENCH_DETAIL"):
        for sec in sorted(by_second):
            print(
                f"  s{sec:3d}: n {len(by_second[sec]):5d} p50 {pct(by_second[sec], 0.5):6.1f} p99 {pct(by_second[sec], 0.99):6.1f}"
            )
    print(
        f"gateway CPU while streaming: {gw_cpu * 100:.0f}% of a core; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"subscriber process loop lag: p99 {pct([l for _, l in lags], 0.99):.1f} ms, max {max((l for _, l in lags), default=0):.1f} ms"
    )
    print(
        f"gateway RSS: before {rss_before:.1f} MB, during (peak) {peak:.1f} MB, growth {peak - rss_before:.1f} MB"
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-emulators":
        asyncio.run(serve_emulators(int(sys.argv[2]), sys.argv[3]))
    else:
        asyncio.run(main())
