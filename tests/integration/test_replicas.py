"""Several dispatching replicas on one PostgreSQL database (real processes, emulated backends on
loopback): each backend followed by one replica at a time, taken over when its replica dies,
pauses or loses the database, handed over at once on a graceful stop; one queue and one fairness."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from app.db import jobs as jobs_repo
from app.db import leases
from app.db.engine import create_engine, create_sessionmaker
from app.db.models import Job, JobEvent, Output
from app.domain.users import BOOTSTRAP_ADMIN_ID, ensure_bootstrap_admin
from comfy_emulator import Emulator, EmulatorConfig
from tests.conftest import _pg_exec, _pg_url
from tests.integration.replicas import (
    Replica,
    finals,
    make_user,
    one_sender_at_a_time,
    senders_in_order,
    start_backends,
    start_replica,
    submit,
    wait_for,
)

LEASE = 5.0

# Real processes, started several at a time, and jobs by the hundred: more than the default.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    """A fresh migrated PostgreSQL database (skipped without PostgreSQL, unless required)."""
    template = request.getfixturevalue("pg_template")
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    request.addfinalizer(lambda: _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return _pg_url(name)


@pytest.fixture
async def cleanup():  # noqa: ANN201
    """Replicas and emulators the test started, stopped at its end whatever happened."""
    things: list = []
    yield things
    for thing in reversed(things):
        await thing.stop()


async def replicas_up(db_url: str, urls: list[str], tmp_path: Path, names: list[str], cleanup: list, **kw):  # noqa: ANN003, ANN201
    async def one(name: str) -> Replica:
        replica = await start_replica(db_url, urls, tmp_path, name, **kw)
        cleanup.append(replica)
        return replica

    return list(await asyncio.gather(*(one(n) for n in names)))


async def settled(replica: Replica, names: set[str], total: int) -> dict[str, str | None]:
    """The admin view once every backend has an owner among `names`, each of them holding its share."""

    async def check() -> dict | None:
        owners = await replica.owned()
        counts = Counter(owners.values())
        fair = {total // len(names), -(-total // len(names))}
        ok = set(counts) == names and all(c in fair for c in counts.values()) and len(owners) == total
        return owners if ok else None

    return await wait_for(check, f"the backends spread over {sorted(names)}", timeout=30)


async def test_kill_9_of_one_replica_of_three_loses_no_job_and_runs_none_twice(
    pg_url: str, tmp_path: Path, cleanup: list
) -> None:
    emus = await start_backends(4)
    cleanup.extend(emus)
    urls = [e.base_url for e in emus]
    reps = await replicas_up(pg_url, urls, tmp_path, ["r1", "r2", "r3"], cleanup, lease=LEASE)
    owners = await settled(reps[0], {"r1", "r2", "r3"}, 4)
    users = [await make_user(reps[0], f"user{i}") for i in range(3)]

    async def burst(i: int) -> list[str]:
        # Every replica takes submits: one queue, whoever took the request.
        return [await submit(reps[(i + k) % 3], users[i][1], steps=5) for k in range(67 if i else 66)]

    ids = [job for batch in await asyncio.gather(*(burst(i) for i in range(3))) for job in batch]
    assert len(ids) == 200
    victim = next(r for r in reps if list(owners.values()).count(r.name) == 1)
    # Mid-run: some done, most not.
    await wait_for(lambda: _count_done(pg_url, ids, 30), "30 jobs done", timeout=60)
    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    await asyncio.to_thread(victim.proc.wait)
    survivor = next(r for r in reps if r is not victim)
    lost = [url for url, owner in owners.items() if owner == victim.name]

    async def taken_over() -> bool:
        now = await survivor.owned()
        return all(now[url] not in (None, victim.name) for url in lost)

    await wait_for(taken_over, "the dead replica's backends taken over", timeout=30, every=0.05)
    takeover = time.monotonic() - killed_at
    # Its lease runs out (LEASE), and a survivor takes it at its next round (a quarter of LEASE);
    # two more seconds for a loaded machine.
    assert takeover <= LEASE * 1.25 + 2.0, takeover

    done = await finals(survivor, ids, timeout=180)
    assert all(job["status"] == "succeeded" for job in done.values()), Counter(
        j["status"] for j in done.values()
    )
    prompts, outputs = await _prompts_and_outputs(pg_url, ids)
    executed = Counter(p for emu in emus for p in emu.executed_prompts)
    # Every job ran exactly once, and nothing else ran: counted on the backends themselves.
    assert all(executed[prompts[j]] == 1 for j in ids), [
        (
            j,
            executed[prompts[j]],
            victim.name,
            owners,
            [
                (e.base_url, e.prompts_received.count(prompts[j]), e.executed_prompts.count(prompts[j]))
                for e in emus
            ],
            [(e.base_url, e.prompt_senders.get(prompts[j])) for e in emus],
        )
        for j in ids
        if executed[prompts[j]] != 1
    ]
    assert sum(executed.values()) == len(ids)
    # Outputs of finished prompts collected once.
    assert all(outputs[j] == 1 for j in ids)
    for emu in emus:
        senders = senders_in_order(emu)
        # Each backend's prompts came from its owner: first the one it had, then (for the dead
        # replica's) the survivor that took it, never two at once.
        assert one_sender_at_a_time(senders), (emu.base_url, senders)
        assert senders[0] == owners[emu.base_url]
    # Any replica serves any output, whoever collected it (one shared volume).
    out = done[ids[0]]["outputs"][0]["url"]
    assert (await survivor.http.get(out)).status_code == 200
    # Busy as they were, the survivors kept renewing their own leases throughout.
    for replica in reps:
        if replica is not victim:
            assert "lease lost" not in replica.log.read_text(), replica.name


async def test_a_replica_paused_past_its_lease_acts_no_more_when_it_resumes(
    pg_url: str, tmp_path: Path, cleanup: list
) -> None:
    emus = await start_backends(2, step_seconds=0.02)
    cleanup.extend(emus)
    urls = [e.base_url for e in emus]
    a, b = await replicas_up(pg_url, urls, tmp_path, ["a", "b"], cleanup, lease=LEASE)
    owners = await settled(b, {"a", "b"}, 2)
    [lost_url] = [u for u, o in owners.items() if o == "a"]
    lost = next(e for e in emus if e.base_url == lost_url)
    _, user = await make_user(b, "u")
    # 0.6 s each: a's backend holds two in flight and one claimed in reserve when it is paused.
    ids = [await submit(b, user, steps=30) for _ in range(12)]
    await wait_for(lambda: _sent_by(lost, "a", 2), "a sending to its backend", timeout=30)
    a.signal(signal.SIGSTOP)
    paused_at = time.monotonic()
    await wait_for(lambda: _owner_is(b, lost_url, "b"), "b taking a's backend", timeout=30)
    # Not before the lease could run out: it was renewed at most a quarter of it before the pause.
    assert time.monotonic() - paused_at >= LEASE * 0.7
    done = await finals(b, ids, timeout=90)
    assert all(job["status"] == "succeeded" for job in done.values())
    sent_by_a = sum(1 for s in lost.prompt_senders.values() if s == "a")
    events_before = await _status_events(pg_url, ids)

    a.signal(signal.SIGCONT)
    # It resumes with stale state (reserves, in-flight prompts, buffered socket messages)...
    await asyncio.sleep(LEASE)
    # ...and sends nothing more to the backend it lost, commits no transition of those jobs...
    assert sum(1 for s in lost.prompt_senders.values() if s == "a") == sent_by_a
    assert await _status_events(pg_url, ids) == events_before
    prompts, outputs = await _prompts_and_outputs(pg_url, ids)
    executed = Counter(p for emu in emus for p in emu.executed_prompts)
    assert all(executed[prompts[j]] == 1 for j in ids) and sum(executed.values()) == len(ids)
    assert all(outputs[j] == 1 for j in ids)
    assert "lease lost" in a.log.read_text()
    # ...and then rejoins as an equal: it gets its share back, under a new generation, and works.
    await settled(b, {"a", "b"}, 2)
    more = [await submit(a, user, steps=2) for _ in range(6)]
    assert all(j["status"] == "succeeded" for j in (await finals(a, more)).values())


async def test_stale_generation_transitions_are_refused_by_the_database(pg_url: str) -> None:
    """The fence itself: after a takeover, the old owner's transitions change nothing."""
    engine = create_engine(pg_url)
    maker = create_sessionmaker(engine)
    url = "http://127.0.0.1:9"
    try:
        async with maker() as session:
            await session.execute(
                text(
                    "INSERT INTO backends (id, url, state, source, added_at, updated_at) VALUES "
                    "(:id, :url, 'active', 'admin', now(), now())"
                ),
                {"id": str(uuid.uuid4()), "url": url},
            )
            await leases.sync_rows(session)
            gen_a = await leases.acquire(session, url, "A", "a", 30)
            await ensure_bootstrap_admin(session)
            user = BOOTSTRAP_ADMIN_ID
            job_id = str(uuid.uuid4())
            session.add(Job(id=job_id, user_id=user, template="t", params={}, workflow={}, status="queued"))
            await session.commit()
        old = leases.Fence("A", gen_a)
        async with maker() as session:
            assert await jobs_repo.claim(session, job_id, backend=url, prompt_id="p1", fence=old) is not None
            await session.commit()
        # A pauses; its lease runs out; B takes the backend.
        async with maker() as session:
            await session.execute(
                update(leases.BackendLease).values(expires_at=func.now() - text("interval '1 second'"))
            )
            gen_b = await leases.acquire(session, url, "B", "b", 30)
            await session.commit()
        assert gen_b == gen_a + 1
        for transition in (
            lambda s: jobs_repo.mark_running(s, job_id, prompt_id="p1"),
            lambda s: jobs_repo.mark_succeeded(s, job_id, prompt_id="p1"),
            lambda s: jobs_repo.unclaim(s, job_id, prompt_id="p1", count_attempt=False),
        ):
            async with maker(info={leases.FENCE_KEY: old}) as session:
                assert await transition(session) is None
                await session.commit()
        async with maker(info={leases.FENCE_KEY: leases.Fence("B", gen_b)}) as session:
            assert (await jobs_repo.mark_running(session, job_id, prompt_id="p1")) is not None
            await session.commit()
        async with maker() as session:
            assert (await jobs_repo.get_job(session, job_id)).status == "running"
    finally:
        await engine.dispose()


async def test_a_replica_cut_from_the_database_stops_before_its_lease_could_expire(
    pg_url: str, tmp_path: Path, cleanup: list
) -> None:
    emus = await start_backends(2)
    cleanup.extend(emus)
    urls = [e.base_url for e in emus]
    proxy = await TcpProxy.start("127.0.0.1", 5432)
    cleanup.append(proxy)
    lease = 3.0
    cut_url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    assert cut_url != pg_url
    [a] = await replicas_up(cut_url, urls, tmp_path, ["a"], cleanup, lease=lease)
    [b] = await replicas_up(pg_url, urls, tmp_path, ["b"], cleanup, lease=lease)
    owners = await settled(b, {"a", "b"}, 2)
    [mine] = [e for e in emus if owners[e.base_url] == "a"]
    await wait_for(lambda: _connections(mine, 1), "a's socket to its backend")

    proxy.cut()
    engine = create_engine(pg_url)
    async with create_sessionmaker(engine)() as session:
        row = await leases.lease_of(session, mine.base_url)
    await engine.dispose()
    assert row is not None and row.owner_name == "a"
    # a stops acting on its backend: its socket closes, before its lease could have expired
    # (b cannot have taken it yet, so the backend then has no socket at all).
    await wait_for(lambda: _connections(mine, 0), "a letting its backend go", timeout=lease * 2, every=0.02)
    assert time.time() < row.expires_at.timestamp(), "a acted on its backend after its lease expired"
    # b takes it once it expired, and work goes on there.
    await wait_for(lambda: _owner_is(b, mine.base_url, "b"), "b taking the backend over", timeout=20)
    _, user = await make_user(b, "u")
    ids = [await submit(b, user, steps=2) for _ in range(8)]
    assert all(j["status"] == "succeeded" for j in (await finals(b, ids)).values())
    assert set(mine.prompt_senders.values()) == {"b"}
    a.signal(signal.SIGKILL)


async def test_a_joining_replica_gets_a_share_and_a_leaving_one_hands_over_at_once(
    pg_url: str, tmp_path: Path, cleanup: list
) -> None:
    emus = await start_backends(4)
    cleanup.extend(emus)
    urls = [e.base_url for e in emus]
    lease = 6.0
    [a] = await replicas_up(pg_url, urls, tmp_path, ["a"], cleanup, lease=lease)
    await settled(a, {"a"}, 4)
    [b] = await replicas_up(pg_url, urls, tmp_path, ["b"], cleanup, lease=lease)
    await settled(a, {"a", "b"}, 4)

    async def owned_by_b() -> list[str] | None:
        # /metrics of each replica shows the backends it holds.
        metrics = (await b.http.get("/metrics")).text
        owned = [line for line in metrics.splitlines() if line.startswith("gateway_backend_owned{")]
        return owned if len(owned) == 2 and all(line.endswith(" 1.0") for line in owned) else None

    await wait_for(owned_by_b, "b's /metrics showing its two backends", timeout=10)

    b.signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    await asyncio.to_thread(b.proc.wait, 20)
    await settled(a, {"a"}, 4)
    # Handed back on the way out: no wait for the leases to run out.
    assert time.monotonic() - stopped_at < lease / 2
    _, user = await make_user(a, "u")
    ids = [await submit(a, user, steps=2) for _ in range(8)]
    assert all(j["status"] == "succeeded" for j in (await finals(a, ids)).values())


async def test_max_running_and_fairness_hold_across_replicas(
    pg_url: str, tmp_path: Path, cleanup: list
) -> None:
    # Jobs of about a second: alice's backlog (120 jobs on 8 slots) takes about 15 s, so whether
    # bob's five wait behind it does not depend on how fast the gateway is.
    emus = await start_backends(4, step_seconds=0.1)
    cleanup.extend(emus)
    urls = [e.base_url for e in emus]
    reps = await replicas_up(pg_url, urls, tmp_path, ["r1", "r2", "r3"], cleanup, lease=LEASE)
    await settled(reps[0], {"r1", "r2", "r3"}, 4)
    capped_id, capped = await make_user(reps[0], "capped", {"max_running": 2})
    alice_id, alice = await make_user(reps[0], "alice")
    bob_id, bob = await make_user(reps[0], "bob")
    engine = create_engine(pg_url)
    maker = create_sessionmaker(engine)
    samples: list[int] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            async with maker() as session:
                stmt = select(func.count()).where(
                    Job.user_id == capped_id, Job.status.in_(("queued", "running")), Job.backend.is_not(None)
                )
                samples.append((await session.execute(stmt)).scalar_one())
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        # The capped user's jobs come in through every replica; each replica dispatches.
        capped_ids = [await submit(reps[i % 3], capped, steps=10) for i in range(15)]
        # At once, eight at a time: the backlog must be there before it drains.
        gate = asyncio.Semaphore(8)

        async def one(i: int) -> str:
            async with gate:
                return await submit(reps[i % 3], alice, steps=10)

        backlog = list(await asyncio.gather(*(one(i) for i in range(120))))
        await wait_for(lambda: _count_dispatched(maker, alice_id, 10), "alice's backlog running", timeout=30)
        bob_ids = [await submit(reps[i % 3], bob, steps=10) for i in range(5)]
        bob_done = await finals(reps[1], bob_ids, timeout=60)
        await finals(reps[2], capped_ids + backlog, timeout=180)
        # From the rows' own times (not when this test got to ask, which a loaded machine delays):
        # how much of alice's backlog was still to be claimed when bob submitted, and how much of
        # it was claimed between bob's first submit and the end of his last job.
        async with maker() as session:
            bob_came, bob_ended = (
                await session.execute(
                    select(func.min(Job.created_at), func.max(Job.finished_at)).where(Job.id.in_(bob_ids))
                )
            ).one()
            alice_claimed = select(func.count()).where(Job.user_id == alice_id)
            remaining = (
                await session.execute(alice_claimed.where(Job.dispatched_at > bob_came))
            ).scalar_one()
            overtook = (
                await session.execute(
                    alice_claimed.where(Job.dispatched_at > bob_came, Job.dispatched_at <= bob_ended)
                )
            ).scalar_one()
    finally:
        stop.set()
        await sampler
        await engine.dispose()
    assert all(j["status"] == "succeeded" for j in bob_done.values())
    # Bob's five went through while most of alice's backlog was still waiting, not behind it:
    # in his time about a slot's worth of her jobs were claimed (her turns alternate with his),
    # not the whole of what she had queued.
    assert remaining >= 80, f"the backlog drained before bob came ({remaining} left): nothing to measure"
    assert overtook <= 40, (overtook, remaining, await _timeline(pg_url, bob_ids))
    # The cap held at every sample, across three replicas dispatching at once, and was used.
    assert max(samples) == 2, Counter(samples)


# ---- helpers -------------------------------------------------------------------------------------


async def _timeline(db_url: str, ids: list[str]) -> list[tuple]:
    """Each job's backend and its times (s after the first was created), for a failure's message."""
    engine = create_engine(db_url)
    try:
        async with create_sessionmaker(engine)() as session:
            rows = (await session.execute(select(Job).where(Job.id.in_(ids)))).scalars().all()
    finally:
        await engine.dispose()
    t0 = min(j.created_at for j in rows)

    def at(t: object) -> float | None:
        return None if t is None else round((t - t0).total_seconds(), 2)  # type: ignore[operator]

    return [
        (j.backend, at(j.created_at), at(j.dispatched_at), at(j.started_at), at(j.finished_at)) for j in rows
    ]


async def _count_done(db_url: str, ids: list[str], n: int) -> bool:
    engine = create_engine(db_url)
    try:
        async with create_sessionmaker(engine)() as session:
            stmt = select(func.count()).where(Job.id.in_(ids), Job.status == "succeeded")
            return (await session.execute(stmt)).scalar_one() >= n
    finally:
        await engine.dispose()


async def _count_dispatched(maker, user_id: str, n: int) -> bool:  # noqa: ANN001
    async with maker() as session:
        stmt = select(func.count()).where(Job.user_id == user_id, Job.dispatched_at.is_not(None))
        return (await session.execute(stmt)).scalar_one() >= n


async def _prompts_and_outputs(db_url: str, ids: list[str]) -> tuple[dict[str, str], Counter]:
    engine = create_engine(db_url)
    try:
        async with create_sessionmaker(engine)() as session:
            rows = await session.execute(select(Job.id, Job.prompt_id).where(Job.id.in_(ids)))
            prompts = {job_id: prompt for job_id, prompt in rows.all()}
            outputs = Counter(
                (await session.execute(select(Output.job_id).where(Output.job_id.in_(ids)))).scalars()
            )
    finally:
        await engine.dispose()
    return prompts, outputs


async def _status_events(db_url: str, ids: list[str]) -> list[tuple[str, int]]:
    engine = create_engine(db_url)
    try:
        async with create_sessionmaker(engine)() as session:
            rows = await session.execute(
                select(JobEvent.job_id, JobEvent.seq)
                .where(JobEvent.job_id.in_(ids))
                .order_by(JobEvent.job_id, JobEvent.seq)
            )
            return [tuple(r) for r in rows.all()]
    finally:
        await engine.dispose()


async def _sent_by(emu, name: str, n: int) -> bool:  # noqa: ANN001
    return sum(1 for s in emu.prompt_senders.values() if s == name) >= n


async def _owner_is(replica: Replica, url: str, name: str) -> bool:
    return (await replica.owned()).get(url) == name


async def _connections(emu, n: int) -> bool:  # noqa: ANN001
    return len(emu.hub.connections) == n


class TcpProxy:
    """A TCP relay to PostgreSQL that can be cut: every connection through it drops, and new ones
    are refused (a replica losing its database, while the others keep theirs)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @classmethod
    async def start(cls, host: str, port: int) -> TcpProxy:
        proxy = cls(host, port)
        proxy._server = await asyncio.start_server(proxy._relay, "127.0.0.1", 0)
        proxy.port = proxy._server.sockets[0].getsockname()[1]
        return proxy

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Silence, as when a network link goes away: nothing more passes either way."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()


async def test_a_job_no_backend_can_run_fails_and_one_another_replicas_backend_can_run_runs_there(
    pg_url: str, tmp_path: Path, cleanup: list
) -> None:
    # "plain" has checkpoint a, "full" checkpoint b; each replica follows one of them, so neither
    # sees every backend itself: what the other's backend can run comes from the backends table.
    plain = Emulator(EmulatorConfig(step_seconds=0.01, models={"checkpoints": ["a.safetensors"]}))
    full = Emulator(EmulatorConfig(step_seconds=0.01, models={"checkpoints": ["b.safetensors"]}))
    for emu in (plain, full):
        await emu.start(host="127.0.0.1", port=0)
        cleanup.append(emu)
    urls = [plain.base_url, full.base_url]
    reps = await replicas_up(pg_url, urls, tmp_path, ["r1", "r2"], cleanup, lease=LEASE)
    await settled(reps[0], {"r1", "r2"}, 2)
    _, user = await make_user(reps[0], "u")

    def body(checkpoint: str) -> dict:
        return {"template": "txt2img", "params": {"prompt": "x", "steps": 1, "checkpoint": checkpoint}}

    async def post(replica: Replica, checkpoint: str) -> str:
        resp = await replica.http.post("/v1/generate", json=body(checkpoint), headers=user)
        assert resp.status_code == 202, resp.text
        return resp.json()["id"]

    # Through both replicas: each job is picked by the owner of the one backend that can run it.
    on_a = [await post(reps[i % 2], "a.safetensors") for i in range(4)]
    on_b = [await post(reps[i % 2], "b.safetensors") for i in range(4)]
    nowhere = [await post(rep, "c.safetensors") for rep in reps]
    done = await finals(reps[0], on_a + on_b + nowhere, timeout=60)

    assert all(done[j]["status"] == "succeeded" and done[j]["waiting_reason"] is None for j in on_a + on_b)
    ran_on_plain, ran_on_full = set(plain.executed_prompts), set(full.executed_prompts)
    assert len(ran_on_plain) == 4 and len(ran_on_full) == 4
    for job_id in nowhere:
        job = done[job_id]
        assert job["status"] == "failed" and job["error"]["type"] == "unsupported_workflow", job
        assert "c.safetensors" in job["error"]["message"] and job["attempts"] == 0


async def test_an_admin_delete_through_a_replica_that_does_not_follow_the_backend_takes_the_prompt_off(
    pg_url: str, tmp_path: Path, cleanup: list
) -> None:
    [emu] = await start_backends(1, step_seconds=0.1)
    cleanup.append(emu)
    reps = await replicas_up(pg_url, [emu.base_url], tmp_path, ["r1", "r2"], cleanup, lease=LEASE)
    owners = await wait_for(lambda: _one_owner(reps[0], emu.base_url), "an owner for the backend")
    owner = next(r for r in reps if r.name == owners)
    other = next(r for r in reps if r is not owner)
    _, user = await make_user(other, "u")
    # Long jobs: the first runs, the second waits in ComfyUI's own queue behind it.
    running, pending = [await submit(other, user, steps=100) for _ in range(2)]

    async def on_backend() -> bool:
        views = [(await other.http.get(f"/v1/jobs/{j}", headers=user)).json() for j in (running, pending)]
        return views[0]["status"] == "running" and len(emu.prompts_received) == 2

    await wait_for(on_backend, "both prompts on the backend, the first running", timeout=30)
    first, second = emu.prompts_received
    for job_id in (pending, running):
        resp = await other.http.delete(f"/v1/admin/jobs/{job_id}")
        assert resp.status_code == 204, resp.text
    # The replica that follows the backend takes them off (the one that took the request does not
    # act on it): the running prompt is interrupted, the waiting one never runs, and the slots
    # they held serve the next jobs.
    await wait_for(lambda: _interrupted(emu, first), "the running prompt interrupted", timeout=10)
    assert second not in emu.executed_prompts
    after = [await submit(owner, user, steps=1) for _ in range(4)]
    assert all(j["status"] == "succeeded" for j in (await finals(owner, after, timeout=20)).values())
    assert second not in emu.executed_prompts


async def _interrupted(emu: Emulator, prompt_id: str) -> bool:
    return any(body.get("prompt_id") == prompt_id for body in emu.interrupts if isinstance(body, dict))


async def _one_owner(replica: Replica, url: str) -> str | None:
    return (await replica.owned()).get(url)


async def test_a_drain_and_a_removal_through_a_replica_that_does_not_own_the_backend_are_honoured(
    pg_url: str, tmp_path: Path, cleanup: list
) -> None:
    emus = await start_backends(2)
    cleanup.extend(emus)
    by_url = {e.base_url: e for e in emus}
    reps = await replicas_up(pg_url, list(by_url), tmp_path, ["r1", "r2"], cleanup, lease=LEASE)
    owners = await settled(reps[0], {"r1", "r2"}, 2)
    drained_url, kept_url = sorted(by_url)
    owner = next(r for r in reps if r.name == owners[drained_url])
    other = next(r for r in reps if r is not owner)
    listing = (await other.http.get("/v1/admin/backends")).json()["items"]
    backend_id = next(b["id"] for b in listing if b["url"] == drained_url)
    _, user = await make_user(other, "u")

    resp = await other.http.post(f"/v1/admin/backends/{backend_id}/drain")
    assert resp.status_code == 200 and resp.json()["state"] == "draining", resp.text
    # The owner re-reads the table at its next poll (0.2 s here): then it sends the drained
    # backend nothing, whichever replica took the jobs.
    await asyncio.sleep(1.0)
    sent_before = len(by_url[drained_url].prompts_received)
    ids = [await submit(reps[i % 2], user, steps=1) for i in range(8)]
    assert all(j["status"] == "succeeded" for j in (await finals(owner, ids)).values())
    assert len(by_url[drained_url].prompts_received) == sent_before
    assert len(by_url[kept_url].prompts_received) >= 8

    assert (await other.http.delete(f"/v1/admin/backends/{backend_id}")).status_code == 204

    async def let_go() -> bool:
        # The owner closed its socket to the removed backend and no replica lists it any more.
        listed = {b["url"] for b in (await owner.http.get("/v1/admin/backends")).json()["items"]}
        return drained_url not in listed and not by_url[drained_url].hub.sockets

    await wait_for(let_go, "the removed backend let go by its owner", timeout=10)
    more = [await submit(reps[i % 2], user, steps=1) for i in range(4)]
    assert all(j["status"] == "succeeded" for j in (await finals(owner, more)).values())
