"""Throughput and added latency: N jobs through the gateway vs. the same N straight to the emulator.

    python bench/throughput.py [--jobs 200] [--job-ms 20] [--sequential 50] [--database-url ...]

One run starts the emulator and the gateway as separate processes (as they would be deployed) and
measures from this process, over loopback:
- burst: all jobs submitted at once; jobs/s from the first submit to the last output downloaded.
  Through the gateway three ways: waiting by listing finished jobs, with one SSE stream per job
  (the heavier client: n open streams on the same two cores as the gateway and the emulator),
  and with one WebSocket (`/v1/ws`) that carries every job's events (the lightest client);
- sequential: one job at a time; per-job latency from submit to output downloaded, so the
  gateway's added latency is not hidden behind queueing.
"Direct" is what a client of ComfyUI itself does: POST /prompt, wait on the WebSocket for the end
of the prompt, read /history, download /view. "Gateway" is POST /v1/generate, wait on the job's
SSE stream for the final status, download the signed output URL.
Job length is set with the HarnessSlowSampler node (steps × seconds_per_step); 0 ms jobs skip it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    ADMIN_KEY,
    cpu_seconds,
    free_port,
    gateway_env,
    pct,
    start_emulator,
    start_gateway,
    stop,
    wait_http,
)

# Connections of the direct client and of the listing and WebSocket clients to the gateway.
POOL = 50


def workflow(i: int, job_ms: float) -> dict:
    """A distinct prompt per job (the color), so ComfyUI's cache never answers for it."""
    nodes: dict = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": i}}}
    image = ["1", 0]
    if job_ms > 0:
        nodes["2"] = {
            "class_type": "HarnessSlowSampler",
            "inputs": {"image": image, "steps": 2, "seconds_per_step": job_ms / 2000.0},
        }
        image = ["2", 0]
    nodes["9"] = {"class_type": "SaveImage", "inputs": {"images": image, "filename_prefix": "bench"}}
    return nodes


class CpuMeter:
    def __init__(self, procs: dict[str, subprocess.Popen]) -> None:
        self.procs = procs
        self.spent: dict[str, dict[str, float]] = {}

    def measure(self, phase: str):  # noqa: ANN201
        meter = self

        class _Phase:
            def __enter__(self) -> None:
                self.start = {name: cpu_seconds(p.pid) for name, p in meter.procs.items()}
                self.own = time.process_time()

            def __exit__(self, *exc: object) -> None:
                spent = {name: cpu_seconds(p.pid) - self.start[name] for name, p in meter.procs.items()}
                spent["client"] = time.process_time() - self.own
                meter.spent[phase] = spent

        return _Phase()


# ---- direct to the emulator -----------------------------------------------------------------


class Direct:
    def __init__(self, base: str) -> None:
        self.base = base
        self.client_id = "bench-" + uuid.uuid4().hex
        self.done: dict[str, asyncio.Future] = {}
        self.http = httpx.AsyncClient(base_url=base, timeout=60, limits=httpx.Limits(max_connections=POOL))

    async def __aenter__(self) -> Direct:
        ws_url = self.base.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        self.ws = await websockets.connect(ws_url, max_size=None)
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.http.aclose()

    async def _read(self) -> None:
        async for raw in self.ws:
            if isinstance(raw, bytes):
                continue
            msg = json.loads(raw)
            data = msg.get("data") or {}
            if msg.get("type") == "executing" and data.get("node") is None:
                fut = self.done.get(data.get("prompt_id"))
                if fut and not fut.done():
                    fut.set_result(time.perf_counter())

    async def run_job(self, i: int, job_ms: float) -> float:
        t0 = time.perf_counter()
        prompt_id = str(uuid.uuid4())
        self.done[prompt_id] = asyncio.get_running_loop().create_future()
        resp = await self.http.post("/prompt", json={"prompt": workflow(i, job_ms), "client_id": self.client_id, "prompt_id": prompt_id})
        resp.raise_for_status()
        await self.done[prompt_id]
        history = (await self.http.get(f"/history/{prompt_id}")).json()[prompt_id]
        for out in history["outputs"].values():
            for image in out.get("images", []):
                view = await self.http.get("/view", params=image)
                view.raise_for_status()
        return time.perf_counter() - t0


# ---- through the gateway --------------------------------------------------------------------


class Gateway:
    def __init__(self, base: str, max_connections: int | None = None) -> None:
        """`max_connections`: None for the client with one SSE stream per job (all open at once);
        the others use a bounded pool like the direct client's: httpcore looks through every
        pooled connection for each request, so 200 connections cost the client more than the
        gateway spends per job."""
        self.headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        self.http = httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=max_connections))

    async def run_job(self, i: int, job_ms: float) -> float:
        t0 = time.perf_counter()
        resp = await self.http.post("/v1/generate", json={"workflow": workflow(i, job_ms)}, headers=self.headers)
        resp.raise_for_status()
        job_id = resp.json()["id"]
        final = None
        async with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=self.headers) as stream:
            event = None
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "status":
                    data = json.loads(line[5:])
                    if data["status"] in ("succeeded", "failed", "canceled"):
                        final = data
        if final is None or final["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} ended as {final}")
        for out in final["outputs"]:
            (await self.http.get(out["url"])).raise_for_status()
        return time.perf_counter() - t0

    async def burst_polling(self, n: int, job_ms: float, offset: int) -> float:
        """Submit n jobs at once, then find finished ones by listing (`GET /v1/jobs?status=...`)
        every 50 ms, downloading each job's outputs as it is seen: one request serves many jobs,
        as an app that polls (or a webhook receiver) would do, instead of n open streams."""
        t0 = time.perf_counter()
        responses = await asyncio.gather(
            *(self.http.post("/v1/generate", json={"workflow": workflow(offset + i, job_ms)}, headers=self.headers) for i in range(n))
        )
        ours = {r.raise_for_status().json()["id"] for r in responses}
        pending = set(ours)
        downloads = []
        while pending:
            await asyncio.sleep(0.05)
            cursor = None
            while pending:
                url = "/v1/jobs?status=succeeded,failed,canceled&limit=100" + (f"&cursor={cursor}" if cursor else "")
                page = (await self.http.get(url, headers=self.headers)).json()
                older = any(job["id"] not in ours for job in page["items"])
                for job in page["items"]:
                    if job["id"] in pending:
                        pending.discard(job["id"])
                        if job["status"] != "succeeded":
                            raise RuntimeError(f"job {job['id']} ended as {job['status']}: {job['error']}")
                        downloads += [asyncio.create_task(self.http.get(out["url"])) for out in job["outputs"]]
                cursor = page["next_cursor"]
                if cursor is None or older:  # newest first: past our jobs, nothing more to find
                    break
        for resp in await asyncio.gather(*downloads):
            resp.raise_for_status()
        return n / (time.perf_counter() - t0)

    async def burst_ws(self, n: int, job_ms: float, offset: int, ws_url: str) -> float:
        """Submit n jobs at once and hear of their ends on one WebSocket (`GET /v1/ws`, every
        event of the caller's jobs), downloading each job's outputs as it ends: the lightest
        client, as an app's backend that follows all of its jobs would be."""
        t0 = time.perf_counter()
        async with websockets.connect(f"{ws_url}/v1/ws?api_key={ADMIN_KEY}", max_size=None) as ws:
            hello = json.loads(await ws.recv())
            assert hello["event"] == "subscribed", hello
            finals: dict[str, dict] = {}
            all_seen = asyncio.Event()
            ours: set[str] = set()
            downloads: list[asyncio.Task] = []

            async def read() -> None:
                async for raw in ws:
                    frame = json.loads(raw)
                    data = frame.get("data") or {}
                    if frame.get("event") == "status" and data.get("status") in ("succeeded", "failed", "canceled"):
                        finals[frame["job_id"]] = data
                        if data["status"] == "succeeded":
                            downloads.extend(asyncio.create_task(self.http.get(out["url"])) for out in data["outputs"])
                        if ours and ours <= finals.keys():
                            all_seen.set()

            reader = asyncio.create_task(read())
            responses = await asyncio.gather(
                *(self.http.post("/v1/generate", json={"workflow": workflow(offset + i, job_ms)}, headers=self.headers) for i in range(n))
            )
            ours.update(r.raise_for_status().json()["id"] for r in responses)
            if ours <= finals.keys():
                all_seen.set()
            await asyncio.wait_for(all_seen.wait(), 600)
            reader.cancel()
        failed = {job_id: finals[job_id]["status"] for job_id in ours if finals[job_id]["status"] != "succeeded"}
        if failed:
            raise RuntimeError(f"jobs did not succeed: {failed}")
        for resp in await asyncio.gather(*downloads):
            resp.raise_for_status()
        return n / (time.perf_counter() - t0)

    async def aclose(self) -> None:
        await self.http.aclose()


async def burst(runner, n: int, job_ms: float, offset: int) -> tuple[float, list[float]]:  # noqa: ANN001
    t0 = time.perf_counter()
    latencies = await asyncio.gather(*(runner.run_job(offset + i, job_ms) for i in range(n)))
    return n / (time.perf_counter() - t0), list(latencies)


async def sequential(runner, n: int, job_ms: float, offset: int) -> list[float]:  # noqa: ANN001
    return [await runner.run_job(offset + i, job_ms) for i in range(n)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--job-ms", type=float, default=20.0, help="length of each job on the emulated GPU")
    parser.add_argument("--sequential", type=int, default=50, help="jobs run one at a time for latency")
    parser.add_argument("--inflight", type=int, default=2, help="GATEWAY_MAX_INFLIGHT_PER_BACKEND")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    emu_port, gw_port = free_port(), free_port()
    emu_base, gw_base = f"http://127.0.0.1:{emu_port}", f"http://127.0.0.1:{gw_port}"
    env = gateway_env(tmp, [emu_base], args.database_url, max_inflight_per_backend=args.inflight)
    procs = [start_emulator(emu_port, env), start_gateway(gw_port, env)]
    cpu = CpuMeter({"emulator": procs[0], "gateway": procs[1]})
    try:
        await wait_http(f"{emu_base}/system_stats")
        await wait_http(f"{gw_base}/readyz")
        async with Direct(emu_base) as direct:
            # Warm both paths (imports, connections, first PNG encoder call).
            await direct.run_job(10_000_000, 0)
            gateway = Gateway(gw_base)
            await gateway.run_job(10_000_001, 0)

            with cpu.measure("direct"):
                d_rate, d_burst = await burst(direct, args.jobs, args.job_ms, 0)
            with cpu.measure("sse"):
                g_rate, g_burst = await burst(gateway, args.jobs, args.job_ms, 1_000_000)
            await gateway.aclose()
            # A fresh connection pool per phase: idle keep-alive connections from the last phase
            # may have been closed by the server in the meantime.
            gateway = Gateway(gw_base, POOL)
            with cpu.measure("polling"):
                p_rate = await gateway.burst_polling(args.jobs, args.job_ms, 4_000_000)
            await gateway.aclose()
            gateway = Gateway(gw_base, POOL)
            with cpu.measure("ws"):
                w_rate = await gateway.burst_ws(args.jobs, args.job_ms, 5_000_000, gw_base.replace("http", "ws", 1))
            await gateway.aclose()
            gateway = Gateway(gw_base)
            d_seq = await sequential(direct, args.sequential, args.job_ms, 2_000_000)
            g_seq = await sequential(gateway, args.sequential, args.job_ms, 3_000_000)
            await gateway.aclose()
    finally:
        stop(procs)

    db = "sqlite" if args.database_url is None else args.database_url.split(":", 1)[0]
    print(f"\n{args.jobs} jobs of {args.job_ms:g} ms, burst, 1 emulated backend, {args.inflight} in flight, {db}")
    print(f"  direct to emulator                       : {d_rate:8.1f} jobs/s")
    print(f"  through gateway, client lists every 50 ms: {p_rate:8.1f} jobs/s   ratio {p_rate / d_rate:6.3f}")
    print(f"  through gateway, one SSE stream per job  : {g_rate:8.1f} jobs/s   ratio {g_rate / d_rate:6.3f}")
    print(f"  through gateway, one WebSocket, all jobs : {w_rate:8.1f} jobs/s   ratio {w_rate / d_rate:6.3f}")
    print("\nCPU time per job in the burst (ms; the machine's load does not change these)")
    for phase, spent in cpu.spent.items():
        print("  " + f"{phase:8s} " + "  ".join(f"{name} {secs * 1000 / args.jobs:6.2f}" for name, secs in spent.items()))
    print(f"\n{args.sequential} jobs one at a time: latency submit -> output downloaded (ms)")
    for name, values in (("direct", d_seq), ("gateway", g_seq)):
        print(f"  {name:8s} p50 {pct(values, .5) * 1000:7.1f}  p95 {pct(values, .95) * 1000:7.1f}  mean {statistics.mean(values) * 1000:7.1f}")
    print(
        f"  added    p50 {(pct(g_seq, .5) - pct(d_seq, .5)) * 1000:7.1f}  p95 {(pct(g_seq, .95) - pct(d_seq, .95)) * 1000:7.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
