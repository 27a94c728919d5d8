"""Submits and dispatcher rounds with a short queue and with a long one: nothing may grow with it.

    python bench/depth.py [--depths 100,100000] [--users 4] [--submits 1000] [--connections 64]
                          [--database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test]

For each depth, a fresh database gets that many queued jobs (spread over `--users` users, written
straight into the table), then the gateway and an emulator start as processes of their own, and:
- H: the gateway's CPU for one `GET /healthz`, and the `/healthz` rate with `--connections`
  keep-alive connections (the yardstick of the submit rate);
- submits: `--submits` accepted `POST /v1/generate` (a template job of the users, round robin)
  over `--connections` connections, the backend drained meanwhile (so no job runs): rate,
  p50/p99 latency, the gateway's CPU per submit in H;
- rounds: the mean time of one dispatcher round while it dispatches (from
  `gateway_dispatch_round_seconds`), the emulator running each job at once;
- memory: the gateway's RSS after all of that.
With `--database-url` (PostgreSQL), each depth gets a database of its own, made from that URL's
server and dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import (  # noqa: E402
    ADMIN_KEY,
    cpu_seconds,
    drop_database,
    free_port,
    fresh_database,
    gateway_env,
    pct,
    rss_kb,
    start_emulator,
    start_gateway,
    stop,
    wait_http,
)
from lean import LeanClient  # noqa: E402

from app.db.migrate import upgrade  # noqa: E402
from app.db.models import Job  # noqa: E402
from app.db.types import utcnow  # noqa: E402
from app.domain import users as users_domain  # noqa: E402

LIMITS = {"max_queued": 1_000_000, "max_running": 2, "rate_per_minute": 1_000_000, "jobs_per_day": 1_000_000}
TINY = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "depth"}},
}


async def prepare(url: str, depth: int, n_users: int) -> list[str]:
    """Users with keys, and `depth` queued jobs spread over them; returns the keys."""
    await asyncio.to_thread(upgrade, url)
    engine = create_async_engine(url)
    keys = []
    async with async_sessionmaker(engine)() as session:
        owners = []
        for i in range(n_users):
            user = await users_domain.create_user(session, name=f"depth-{i}", limits=LIMITS)
            keys.append((await users_domain.create_key(session, user))[1])
            owners.append(user.id)
        await session.commit()
    async with engine.begin() as conn:
        base = utcnow()
        for start in range(0, depth, 5000):
            rows = [
                {
                    "id": str(uuid.uuid4()),
                    "user_id": owners[i % n_users],
                    "status": "queued",
                    "template": None,
                    "params": {},
                    "workflow": TINY,
                    "output_nodes": ["9"],
                    "priority": 0,
                    "meta": {},
                    "created_at": base,
                    "updated_at": base,
                    "attempts": 0,
                    "cancel_requested": False,
                    "event_seq": 1,
                    "inputs": [],
                    "keep_temp": False,
                }
                for i in range(start, min(depth, start + 5000))
            ]
            await conn.execute(insert(Job), rows)
    if engine.dialect.name == "postgresql":
        # A table that grew to this size over time has statistics (autovacuum analyzes it); one
        # filled in a second has none yet, and PostgreSQL would plan for an empty table.
        # VACUUM too: the triggers' counter rows were updated 100,000 times in one transaction,
        # which steady work (and autovacuum) never leaves behind.
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE"))
    await engine.dispose()
    return keys


def total(text: str, name: str) -> float:
    """The sum of a counter's samples over all its labels."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == f"{name}_total"
    )


def histogram(text: str, name: str) -> tuple[float, float]:
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_sum":
                total += sample.value
            elif sample.name == f"{name}_count":
                count += sample.value
    return total, count


async def measure(url: str, depth: int, args: argparse.Namespace) -> dict[str, float]:
    keys = await prepare(url, depth, args.users)
    tmp = Path(tempfile.mkdtemp(prefix="gw-depth-"))
    emu_port, gw_port = free_port(), free_port()
    emu, gw = f"http://127.0.0.1:{emu_port}", f"http://127.0.0.1:{gw_port}"
    env = gateway_env(tmp, [emu], url, log_level="error")
    procs = [start_emulator(emu_port, env)]
    gateway = start_gateway(gw_port, env)
    procs.append(gateway)
    result: dict[str, float] = {}
    try:
        await wait_http(f"{emu}/system_stats")
        await wait_http(f"{gw}/healthz")
        await asyncio.sleep(2.0)
        health = LeanClient(gw, args.connections)
        await asyncio.gather(*(health.get("/healthz") for _ in range(500)))
        c0, t0 = cpu_seconds(gateway.pid), time.perf_counter()
        await asyncio.gather(*(health.get("/healthz") for _ in range(3000)))
        result["healthz_rate"] = 3000 / (time.perf_counter() - t0)
        h = result["H_ms"] = (cpu_seconds(gateway.pid) - c0) / 3000 * 1e3
        await health.aclose()

        admin = LeanClient(gw, 2, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        backend_id = (await admin.get("/v1/admin/backends")).ok().json()["items"][0]["id"]
        # Submits alone first: the backend drained, so that no job runs meanwhile.
        (await admin.request("POST", f"/v1/admin/backends/{backend_id}/drain")).ok()
        await asyncio.sleep(1.0)
        clients = [LeanClient(gw, args.connections, headers={"Authorization": f"Bearer {k}"}) for k in keys]
        body = json.dumps({"template": "blur", "params": {"width": 64, "height": 64}}).encode()
        latencies: list[float] = []

        async def submit(i: int) -> None:
            t = time.perf_counter()
            resp = await clients[i % len(clients)].request("POST", "/v1/generate", body, "application/json")
            if resp.status != 202:
                raise RuntimeError(f"submit answered {resp.status}: {resp.body[:300]!r}")
            latencies.append(time.perf_counter() - t)

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
                    f"{args.profile}.{depth}",
                ]
            )
            await asyncio.sleep(1.0)

        async def worker(w: int) -> None:
            # Closed loop: each connection sends its next submit when the last is answered, so a
            # latency is the server's, not time spent waiting for a free connection here.
            for i in range(w, args.submits, args.connections):
                await submit(i)

        c0, t0 = cpu_seconds(gateway.pid), time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(args.connections)))
        wall = time.perf_counter() - t0
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        result["submit_rate"] = args.submits / wall
        result["submit_H"] = (cpu_seconds(gateway.pid) - c0) / args.submits * 1e3 / h
        result["submit_p50_ms"] = pct(latencies, 0.5) * 1e3
        result["submit_p99_ms"] = pct(latencies, 0.99) * 1e3
        (await admin.request("POST", f"/v1/admin/backends/{backend_id}/resume")).ok()
        await asyncio.sleep(1.0)
        text = (await admin.get("/metrics")).ok().body.decode()
        before, ended = (
            histogram(text, "gateway_dispatch_round_seconds"),
            total(text, "gateway_jobs_finished"),
        )
        await asyncio.sleep(5.0)  # rounds that dispatch: the emulator runs each job at once
        text = (await admin.get("/metrics")).ok().body.decode()
        after = histogram(text, "gateway_dispatch_round_seconds")
        rounds = after[1] - before[1]
        result["round_ms"] = (after[0] - before[0]) / rounds * 1e3 if rounds else float("nan")
        result["rounds"] = rounds
        # A round's time is wall time (its sends are awaited in it): how many jobs the rounds
        # moved says whether longer rounds did more.
        result["jobs_per_s"] = (total(text, "gateway_jobs_finished") - ended) / 5.0
        result["rss_mb"] = rss_kb(gateway.pid) / 1024
        for client in (*clients, admin):
            await client.aclose()
    finally:
        stop(procs)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depths", default="100,100000")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--submits", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--profile", default=None, help="py-spy's collapsed stacks of the submits to PROFILE.<depth>"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL server to make databases on (default: SQLite files)",
    )
    args = parser.parse_args()
    results = {}
    for depth in (int(d) for d in args.depths.split(",")):
        fresh = await fresh_database(args.database_url)
        url = fresh or f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='gw-depth-db-')}/gateway.db"
        try:
            results[depth] = await measure(url, depth, args)
        finally:
            await drop_database(args.database_url, fresh)
        r = results[depth]
        print(
            f"{depth:>7} queued: H {r['H_ms']:.3f} ms, /healthz {r['healthz_rate']:7.0f}/s | submits {r['submit_rate']:6.1f}/s "
            f"({r['submit_rate'] / r['healthz_rate']:.3f} x healthz), {r['submit_H']:5.1f} H each, p50 {r['submit_p50_ms']:6.1f} ms, "
            f"p99 {r['submit_p99_ms']:6.1f} ms | round {r['round_ms']:6.2f} ms ({r['rounds']:.0f} rounds, {r['jobs_per_s']:.0f} jobs/s ended) | RSS {r['rss_mb']:6.1f} MB",
            flush=True,
        )
    if len(results) >= 2:
        lo, hi = min(results), max(results)
        a, b = results[lo], results[hi]
        print(
            f"\n{hi} vs {lo} queued: submit rate x{b['submit_rate'] / a['submit_rate']:.2f}, CPU per submit x{b['submit_H'] / a['submit_H']:.2f}, "
            f"round time x{b['round_ms'] / a['round_ms']:.2f}, RSS {b['rss_mb'] - a['rss_mb']:+.1f} MB"
        )


if __name__ == "__main__":
    asyncio.run(main())
