"""Throughput, CPU per job and added latency: jobs through the gateway vs. the same jobs sent
straight to the backend by a lean client, in one run, on one machine.

    python bench/throughput.py [--jobs 200] [--concurrency 8] [--job-ms 0] [--steps 1]
                               [--sequential 30] [--database-url URL] [--comfy-url URL]

Every figure is a ratio measured in this run, or CPU in H: the CPU one `GET /healthz` costs the
same gateway process (measured first, over keep-alive connections). Machines differ by 2-3x in
raw speed; these figures do not.

Both clients are lean (bench/lean.py: raw HTTP/1.1 over keep-alive connections, one WebSocket,
nothing fetched that the job does not need), so that "direct" is the backend's limit and not the
client's:
- direct: POST /prompt, wait on one shared ComfyUI WebSocket for the prompt's `executing: null`,
  taking its images from its `executed` messages (as the gateway does), GET /view of each;
- gateway: POST /v1/generate (a raw workflow), wait on one shared `/v1/ws` for the final status,
  GET each output's signed URL.
`--concurrency` jobs are in the client's hands at once (submitted and not yet downloaded).

The backend is the emulator, started here (it is cheaper to run than ComfyUI, so the ratios are
harsher than against ComfyUI), or a running ComfyUI given with `--comfy-url` (then jobs are
EmptyImage 8x8 -> ImageInvert -> SaveImage, and `--job-ms`/`--steps` do not apply).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    ADMIN_KEY,
    cpu_seconds,
    drop_database,
    free_port,
    fresh_database,
    gateway_env,
    pct,
    start_emulator,
    start_gateway,
    stop,
    wait_http,
)
from lean import LeanClient  # noqa: E402

TERMINAL = ("succeeded", "failed", "canceled")


def workflow(i: int, job_ms: float, steps: int, real: bool) -> dict:
    """A distinct prompt per job (the color), so that ComfyUI's cache never answers for it."""
    nodes: dict = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": i % 16_777_216},
        }
    }
    image = ["1", 0]
    if real:
        nodes["2"] = {"class_type": "ImageInvert", "inputs": {"image": image}}
        image = ["2", 0]
    elif job_ms > 0 or steps > 1:
        nodes["2"] = {
            "class_type": "HarnessSlowSampler",
            "inputs": {"image": image, "steps": steps, "seconds_per_step": job_ms / 1000.0 / steps},
        }
        image = ["2", 0]
    nodes["9"] = {"class_type": "SaveImage", "inputs": {"images": image, "filename_prefix": "bench"}}
    return nodes


class Cpu:
    """CPU seconds spent by processes (and this client) over a block."""

    def __init__(self, procs: dict[str, int | list[int]]) -> None:
        self.procs = {name: pids if isinstance(pids, list) else [pids] for name, pids in procs.items()}

    @staticmethod
    def _read(pids: list[int]) -> dict[int, float]:
        seconds = {}
        for pid in pids:
            with contextlib.suppress(OSError):  # a database connection that closed meanwhile
                seconds[pid] = cpu_seconds(pid)
        return seconds

    def __enter__(self) -> Cpu:
        self.start = {name: self._read(pids) for name, pids in self.procs.items()}
        self.own = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.spent = {}
        for name, pids in self.procs.items():
            end = self._read(pids)
            self.spent[name] = sum(end[pid] - self.start[name][pid] for pid in end if pid in self.start[name])
        self.spent["client"] = time.process_time() - self.own


class Direct:
    def __init__(self, base: str, pool: int) -> None:
        self.base = base
        self.client_id = "bench-" + uuid.uuid4().hex
        self.http = LeanClient(base, pool)
        # A prompt's UI outputs by node, from its `executed` messages; handed over when it ends.
        self.ended: dict[str, asyncio.Future[list[dict]]] = {}
        self.outputs: dict[str, list[dict]] = {}

    async def open(self) -> None:
        self.ws = await websockets.connect(
            self.base.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}",
            max_size=None,
            compression=None,
        )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            if isinstance(raw, bytes) or ('"executing"' not in raw and '"executed"' not in raw):
                continue
            msg = json.loads(raw)
            data = msg["data"]
            pid = data.get("prompt_id")
            if msg["type"] == "executed":
                self.outputs.setdefault(pid, []).append(data.get("output") or {})
            elif msg["type"] == "executing" and data.get("node") is None:
                fut = self.ended.get(pid)
                if fut is not None and not fut.done():
                    fut.set_result(self.outputs.pop(pid, []))

    async def run_job(self, wf: dict) -> float:
        t0 = time.perf_counter()
        prompt_id = str(uuid.uuid4())
        ended = self.ended[prompt_id] = asyncio.get_running_loop().create_future()
        (
            await self.http.post_json(
                "/prompt", {"prompt": wf, "client_id": self.client_id, "prompt_id": prompt_id}
            )
        ).ok()
        outputs = await ended
        del self.ended[prompt_id]
        if not any(out.get("images") for out in outputs):
            raise RuntimeError(f"prompt {prompt_id} ended with no images")
        for out in outputs:
            for image in out.get("images", ()):
                query = f"filename={image['filename']}&subfolder={image['subfolder']}&type={image['type']}"
                (await self.http.get(f"/view?{query}")).ok()
        return time.perf_counter() - t0

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.http.aclose()


class Through:
    def __init__(self, base: str, pool: int) -> None:
        self.base = base
        self.http = LeanClient(base, pool, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        self.ended: dict[str, asyncio.Future[dict]] = {}
        # Finals that came before the submit's answer (a job can end before its 202 is read).
        self.early: dict[str, dict] = {}

    async def open(self) -> None:
        self.ws = await websockets.connect(
            self.base.replace("http", "ws", 1) + "/v1/ws", max_size=None, compression=None
        )
        await self.ws.send(ADMIN_KEY)
        hello = json.loads(await self.ws.recv())
        assert hello["event"] == "subscribed", hello
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            if '"status"' not in raw:
                continue
            frame = json.loads(raw)
            data = frame.get("data") or {}
            if frame.get("event") == "status" and data.get("status") in TERMINAL:
                fut = self.ended.get(frame["job_id"])
                if fut is None:
                    self.early[frame["job_id"]] = data
                elif not fut.done():
                    fut.set_result(data)

    async def run_job(self, wf: dict) -> float:
        t0 = time.perf_counter()
        job_id = (await self.http.post_json("/v1/generate", {"workflow": wf})).ok().json()["id"]
        if job_id in self.early:
            final = self.early.pop(job_id)
        else:
            fut = self.ended[job_id] = asyncio.get_running_loop().create_future()
            final = await fut
            del self.ended[job_id]
        if final["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} ended {final['status']}: {final.get('error')}")
        if not final["outputs"]:
            raise RuntimeError(f"job {job_id} succeeded with no outputs")
        for out in final["outputs"]:
            (await self.http.get(out["url"])).ok()
        return time.perf_counter() - t0

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.http.aclose()


async def _server_pids(url: str) -> list[int]:
    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    conn = await asyncpg.connect(parsed.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", parsed.database
        )
    finally:
        await conn.close()
    return [row["pid"] for row in rows]


async def burst(client: Direct | Through, n: int, concurrency: int, make, offset: int) -> list[float]:  # noqa: ANN001
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> float:
        async with gate:
            return await client.run_job(make(offset + i))

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def healthz_cost(gw_base: str, gw_pid: int, n: int) -> float:
    """H: the gateway's CPU seconds per GET /healthz, 8 keep-alive connections."""
    client = LeanClient(gw_base, 8)
    await asyncio.gather(*(client.get("/healthz") for _ in range(200)))  # warm
    with Cpu({"gateway": gw_pid}) as cpu:
        gate = asyncio.Semaphore(8)

        async def one() -> None:
            async with gate:
                (await client.get("/healthz")).ok()

        await asyncio.gather(*(one() for _ in range(n)))
    await client.aclose()
    return cpu.spent["gateway"] / n


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8, help="jobs in the client's hands at once")
    parser.add_argument("--job-ms", type=float, default=0.0, help="length of each job on the emulated GPU")
    parser.add_argument("--steps", type=int, default=1, help="sampler steps per job (progress messages)")
    parser.add_argument("--sequential", type=int, default=30, help="jobs run one at a time for latency")
    parser.add_argument(
        "--inflight", type=int, default=None, help="GATEWAY_MAX_INFLIGHT_PER_BACKEND (default: the gateway's)"
    )
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument(
        "--comfy-url", default=None, help="a running ComfyUI to measure against instead of the emulator"
    )
    parser.add_argument(
        "--comfy-pid", type=int, default=None, help="the ComfyUI process of --comfy-url, to read its CPU too"
    )
    parser.add_argument(
        "--profile", default=None, help="write py-spy's collapsed stacks of the gateway's burst to this file"
    )
    args = parser.parse_args()

    real = args.comfy_url is not None
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    gw_port = free_port()
    gw_base = f"http://127.0.0.1:{gw_port}"
    procs: list[subprocess.Popen] = []
    if real:
        backend = args.comfy_url.rstrip("/")
    else:
        emu_port = free_port()
        backend = f"http://127.0.0.1:{emu_port}"
    extra = {} if args.inflight is None else {"max_inflight_per_backend": args.inflight}
    database_url = await fresh_database(args.database_url)
    env = gateway_env(tmp, [backend], database_url, **extra)
    if not real:
        procs.append(start_emulator(emu_port, env))
    gateway = start_gateway(gw_port, env)
    procs.append(gateway)
    watched = (
        {"gateway": gateway.pid}
        | ({"comfyui": args.comfy_pid} if args.comfy_pid else {})
        | ({} if real else {"emulator": procs[0].pid})
    )

    def make(i: int) -> dict:
        return workflow(i, args.job_ms, args.steps, real)

    try:
        await wait_http(f"{backend}/system_stats")
        await wait_http(f"{gw_base}/healthz")
        await asyncio.sleep(1.0)  # the dispatcher connects and reads /object_info
        h = await healthz_cost(gw_base, gateway.pid, 3000)
        direct, through = Direct(backend, args.concurrency), Through(gw_base, args.concurrency)
        await direct.open()
        await through.open()
        # Warm both paths (imports, connections, the first PNG encode).
        await burst(direct, 8, args.concurrency, make, 10_000_000)
        await burst(through, 8, args.concurrency, make, 11_000_000)

        with Cpu(watched) as d_cpu:
            await burst(direct, args.jobs, args.concurrency, make, 0)
        spy = None
        if args.profile:
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "-p",
                    str(gateway.pid),
                    "-r",
                    "200",
                    "--gil",
                    "-f",
                    "raw",
                    "-o",
                    args.profile,
                ]
            )
            await asyncio.sleep(1.0)
        if database_url is not None:
            # The database server's work for the gateway: its connections' processes.
            watched = {**watched, "postgres": await _server_pids(database_url)}
        with Cpu(watched) as g_cpu:
            await burst(through, args.jobs, args.concurrency, make, 1_000_000)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        d_seq = [await direct.run_job(make(2_000_000 + i)) for i in range(args.sequential)]
        g_seq = [await through.run_job(make(3_000_000 + i)) for i in range(args.sequential)]
        await direct.close()
        await through.close()
    finally:
        stop(procs)
        await drop_database(args.database_url, database_url)

    n = args.jobs
    d_rate, g_rate = n / d_cpu.wall, n / g_cpu.wall
    db = "sqlite" if args.database_url is None else args.database_url.split(":", 1)[0]
    kind = f"ComfyUI at {backend}" if real else f"emulator, {args.job_ms:g} ms, {args.steps} step(s)"
    print(f"\n{n} jobs ({kind}), {args.concurrency} in the client's hands, gateway on {db}")
    print(f"  H = {h * 1e3:.3f} ms: the gateway's CPU for one GET /healthz")
    print(f"  direct  : {d_rate:8.1f} jobs/s")
    print(f"  gateway : {g_rate:8.1f} jobs/s   ratio {g_rate / d_rate:5.3f}")
    print("  CPU per job (ms, and in H for the gateway):")
    for phase, cpu in (("direct", d_cpu), ("gateway", g_cpu)):
        parts = "  ".join(f"{name} {secs * 1e3 / n:6.2f}" for name, secs in cpu.spent.items())
        print(f"    {phase:8s} {parts}")
    print(f"  gateway CPU per job: {g_cpu.spent['gateway'] / n / h:6.1f} H")
    for backend_proc in ("emulator", "comfyui"):
        if backend_proc in d_cpu.spent:
            print(
                f"  {backend_proc} CPU per job (direct): {d_cpu.spent[backend_proc] / n * 1e3:6.2f} ms, {d_cpu.spent[backend_proc] / n / h:6.1f} H"
            )
    print(f"\n{args.sequential} jobs one at a time, submit -> output downloaded (ms)")
    for name, values in (("direct", d_seq), ("gateway", g_seq)):
        print(
            f"  {name:8s} p50 {pct(values, 0.5) * 1e3:7.1f}  p95 {pct(values, 0.95) * 1e3:7.1f}  mean {statistics.mean(values) * 1e3:7.1f}"
        )
    print(
        f"  added    p50 {(pct(g_seq, 0.5) - pct(d_seq, 0.5)) * 1e3:7.1f}  p95 {(pct(g_seq, 0.95) - pct(d_seq, 0.95)) * 1e3:7.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
