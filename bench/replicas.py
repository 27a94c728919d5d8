"""Several dispatching replicas on one PostgreSQL: the figures of the replicas note.

    python bench/replicas.py [--pg-url postgresql://postgres@127.0.0.1:5432/test] [--lease 4]
                             [--jobs 200] [--backends 4] [--latency-jobs 20]

- takeover after kill -9: from the SIGKILL of a replica to the moment the admin view shows all
  of its backends held by others (median of 5; each round a fresh replica replaces the dead one);
- jobs/s with 3 replicas vs 1, on the same emulated backends (jobs of `--steps` steps of 10 ms,
  submitted through the replicas' APIs in turn, 16 at a time, each held open with `Prefer: wait`),
  with the replicas' CPU per job in H (one `GET /healthz` of a replica's process);
- the added latency of a submit taken by a replica that does not own the backend: `Prefer: wait`
  round trips of one-step jobs on one backend, through its owner and through the other replica,
  interleaved (medians).

Gateway processes are real (`python -m app.cli serve`), the backends in-process emulators, the
database a fresh one made from the migrations and dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.db.migrate import upgrade  # noqa: E402
from tests.integration.replicas import (  # noqa: E402
    Replica,
    finals,
    job_body,
    make_user,
    start_backends,
    start_replica,
    wait_for,
)

# The throughput runs use the settings' defaults for the loops' pace (the tests poll faster, to be
# quick): a replica's own rounds are part of what it costs.
DEFAULTS = {"GATEWAY_DISPATCH_POLL_SECONDS": "1.0", "GATEWAY_HEALTH_CHECK_SECONDS": "5.0"}


def _admin(pg_url: str, sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


async def owners(replica: Replica) -> dict[str, str | None]:
    return await replica.owned()


async def settle(replica: Replica, names: set[str], total: int) -> None:
    async def check() -> bool:
        now = await owners(replica)
        counts = {n: list(now.values()).count(n) for n in names}
        return (
            len(now) == total
            and set(now.values()) == names
            and max(counts.values()) - min(counts.values()) <= 1
        )

    await wait_for(check, f"backends spread over {sorted(names)}", timeout=120)


async def takeover(db: str, urls: list[str], tmp: Path, lease: float, rounds: int = 5) -> list[float]:
    reps = list(await asyncio.gather(*(start_replica(db, urls, tmp, f"t{i}", lease=lease) for i in range(3))))
    times: list[float] = []
    try:
        for n in range(rounds):
            await settle(reps[0], {r.name for r in reps}, len(urls))
            now = await owners(reps[0])
            victim = next(r for r in reps if r.name in now.values())
            lost = [u for u, o in now.items() if o == victim.name]
            victim.signal(signal.SIGKILL)
            killed = time.monotonic()
            survivor = next(r for r in reps if r is not victim)

            async def taken(s: Replica = survivor, gone: str = victim.name, lost: list[str] = lost) -> bool:
                view = await owners(s)
                return all(view[u] not in (None, gone) for u in lost)

            await wait_for(taken, "takeover", timeout=120, every=0.02)
            times.append(time.monotonic() - killed)
            await victim.stop()
            reps.remove(victim)
            reps.append(await start_replica(db, urls, tmp, f"t{3 + n}", lease=lease))
    finally:
        for r in reps:
            await r.stop()
    return times


def cpu_seconds(replicas: list[Replica]) -> float:
    """User + system CPU the replicas' processes have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for r in replicas:
        fields = Path(f"/proc/{r.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


async def measure_h(replica: Replica, n: int = 2000) -> float:
    """H: the CPU one `GET /healthz` costs the replica's process (seconds)."""
    for _ in range(100):
        await replica.http.get("/healthz")
    before = cpu_seconds([replica])
    for _ in range(n):
        await replica.http.get("/healthz")
    return (cpu_seconds([replica]) - before) / n


async def run_jobs(reps: list[Replica], user: dict, jobs: int, steps: int) -> tuple[float, float]:
    """Jobs per second, and the replicas' CPU per job (seconds)."""
    gate = asyncio.Semaphore(16)
    ids: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            r = reps[i % len(reps)]
            # Held open until the job ends (no polling: the figure is the replicas', not a poller's).
            wait = {**user, "Prefer": "wait=60"}
            resp = await r.http.post("/v1/generate", json=job_body(steps), headers=wait)
            assert resp.status_code == 200, resp.text
            ids.append(resp.json()["id"])

    cpu = cpu_seconds(reps)
    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(jobs)))
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(reps) - cpu
    done = await finals(reps[0], ids)
    assert all(j["status"] == "succeeded" for j in done.values())
    return jobs / elapsed, cpu / jobs


async def throughput(
    db: str, urls: list[str], tmp: Path, lease: float, jobs: int, steps: int
) -> tuple[float, tuple[float, float], tuple[float, float]]:
    """H, then (jobs/s, CPU per job) with one replica and with three."""
    first = await start_replica(db, urls, tmp, "s0", lease=lease, env=DEFAULTS)
    others: list[Replica] = []
    try:
        await settle(first, {"s0"}, len(urls))
        _, user = await make_user(first, f"bench-{uuid.uuid4().hex[:6]}")
        await run_jobs([first], user, 20, steps)  # warm-up
        h = await measure_h(first)
        one = await run_jobs([first], user, jobs, steps)
        others = list(
            await asyncio.gather(
                *(start_replica(db, urls, tmp, f"s{i}", lease=lease, env=DEFAULTS) for i in (1, 2))
            )
        )
        await settle(first, {"s0", "s1", "s2"}, len(urls))
        await run_jobs([first, *others], user, 20, steps)  # warm-up
        three = await run_jobs([first, *others], user, jobs, steps)
    finally:
        for r in [first, *others]:
            await r.stop()
    return h, one, three


async def latency(db: str, url: str, tmp: Path, lease: float, n: int) -> tuple[float, float]:
    a, b = await asyncio.gather(
        *(start_replica(db, [url], tmp, f"l{i}", lease=lease, env=DEFAULTS) for i in range(2))
    )
    try:
        await wait_for(lambda: _owned(a, url), "an owner for the backend", timeout=60)
        owner_name = (await owners(a))[url]
        owner, other = (a, b) if owner_name == a.name else (b, a)
        _, user = await make_user(a, f"lat-{uuid.uuid4().hex[:6]}")
        wait = {**user, "Prefer": "wait=30"}
        samples: dict[str, list[float]] = {"owner": [], "other": []}
        for i in range(n + 2):
            for label, r in (("owner", owner), ("other", other)):
                t = time.monotonic()
                resp = await r.http.post("/v1/generate", json=job_body(1), headers=wait)
                assert resp.status_code == 200 and resp.json()["status"] == "succeeded", resp.text
                if i >= 2:  # two warm-up rounds
                    samples[label].append(time.monotonic() - t)
    finally:
        await a.stop()
        await b.stop()
    return statistics.median(samples["owner"]), statistics.median(samples["other"])


async def _owned(replica: Replica, url: str) -> bool:
    return (await owners(replica)).get(url) is not None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--lease", type=float, default=4.0)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--backends", type=int, default=4)
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument(
        "--steps", type=int, nargs="+", default=[5, 50], help="sampler steps of 10 ms per job, one run each"
    )
    parser.add_argument(
        "--only",
        choices=["takeover", "throughput", "latency"],
        action="append",
        help="run these figures only",
    )
    args = parser.parse_args()
    from sqlalchemy.engine import make_url

    name = f"gw_bench_{uuid.uuid4().hex[:10]}"
    await asyncio.to_thread(_admin, args.pg_url, f'CREATE DATABASE "{name}"')
    db = make_url(args.pg_url).set(drivername="postgresql+asyncpg", database=name).render_as_string(False)
    emus = await start_backends(args.backends, step_seconds=0.01)
    urls = [e.base_url for e in emus]
    try:
        await asyncio.to_thread(upgrade, db)
        with tempfile.TemporaryDirectory() as tmp:
            only = set(args.only or ["takeover", "throughput", "latency"])
            if "takeover" in only:
                times = await takeover(db, urls, Path(tmp), args.lease)
                print(
                    f"takeover after kill -9 (lease {args.lease:g} s, {args.backends} backends, 3 replicas): "
                    f"median {statistics.median(times):.2f} s, runs {', '.join(f'{t:.2f}' for t in times)}"
                )
            if "throughput" in only:
                for steps in args.steps:
                    h, (one, cpu1), (three, cpu3) = await throughput(
                        db, urls, Path(tmp), args.lease, args.jobs, steps
                    )
                    # What the backends could do if never idle: each runs one prompt at a time.
                    ceiling = args.backends / (steps * 0.01)
                    print(
                        f"throughput, {args.jobs} jobs of {steps} x 10 ms on {args.backends} backends "
                        f"(at most {ceiling:.0f} jobs/s; H = {h * 1000:.2f} ms): "
                        f"1 replica {one:.1f} jobs/s at {cpu1 / h:.0f} H per job, "
                        f"3 replicas {three:.1f} jobs/s at {cpu3 / h:.0f} H per job (all three), "
                        f"ratio {three / one:.2f}"
                    )
            if "latency" in only:
                own, other = await latency(db, urls[0], Path(tmp), args.lease, args.latency_jobs)
                print(
                    f"submit-to-result (Prefer: wait, one-step job, median of {args.latency_jobs}): "
                    f"through the owner {own * 1000:.0f} ms, through the other replica {other * 1000:.0f} ms "
                    f"(added {1000 * (other - own):+.0f} ms)"
                )
    finally:
        for emu in emus:
            await emu.stop()
        await asyncio.to_thread(_admin, args.pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    asyncio.run(main())
