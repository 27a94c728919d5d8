"""The counters the database keeps (migration 0009) agree with the rows they count, whatever
happened to the jobs: submits, dispatch, success, failure, cancels, deletes, a job's creation time
moved. Quotas, /v1/me, the scheduler and the gauges read them instead of counting the queue."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

from sqlalchemy import select, update

from app.db.models import Job, JobCount, JobCreatedHour
from app.db.types import utcnow
from app.domain import queue_metrics
from tests.integration.conftest import Gateway

SLOW = {"template": "txt2img", "params": {"prompt": "a", "steps": 30}}
BLUR = {"template": "blur", "params": {"width": 16, "height": 16}}


def _state(job: Job) -> str | None:
    if job.status == "queued":
        return "queued" if job.backend is None else "dispatched"
    return "running" if job.status == "running" else None


async def _counters_match_rows(gw: Gateway, *, moving: bool = False) -> None:
    """`moving`: jobs change while this reads (two statements, two moments): read again until
    a pair of reads agrees, which wrong counters never do."""
    for _ in range(100 if moving else 1):
        try:
            await _compare(gw)
            return
        except AssertionError:
            if not moving:
                raise
            await asyncio.sleep(0.05)
    await _compare(gw)


async def _compare(gw: Gateway) -> None:
    async with gw.state.sessionmaker() as session:
        jobs = (await session.execute(select(Job))).scalars().all()
        counts = {(c.user_id, c.state): c.n for c in (await session.execute(select(JobCount))).scalars()}
        hours = {(h.user_id, h.hour): h.n for h in (await session.execute(select(JobCreatedHour))).scalars()}
    expected = Counter((j.user_id, s) for j in jobs if (s := _state(j)) is not None)
    assert {k: v for k, v in counts.items() if v} == dict(expected)
    created = Counter((j.user_id, int(j.created_at.timestamp()) // 3600) for j in jobs)
    assert {k: v for k, v in hours.items() if v} == dict(created)


async def test_the_counters_follow_every_change_of_the_rows(gateway: Gateway) -> None:
    _, alice = await gateway.create_user("alice", limits={"max_running": 1})
    _, bob = await gateway.create_user("bob")
    a = [(await gateway.generate(SLOW, headers=alice)).json()["id"] for _ in range(3)]
    b = [(await gateway.generate(SLOW, headers=bob)).json()["id"] for _ in range(2)]
    # Mid-flight: some queued, some handed to the backend, some running.
    await gateway.wait(a[0], {"running", "succeeded"}, headers=alice)
    await _counters_match_rows(gateway, moving=True)
    await gateway.http.post(f"/v1/jobs/{a[2]}/cancel", headers=alice)
    failing = {
        "workflow": {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
            },
            "2": {"class_type": "HarnessFail", "inputs": {"image": ["1", 0]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
        }
    }
    failed = (await gateway.generate(failing)).json()["id"]
    for job_id, headers in [(a[0], alice), (a[1], alice), (b[0], bob), (b[1], bob), (failed, gateway.admin)]:
        await gateway.wait(job_id, headers=headers, timeout=60)
    await _counters_match_rows(gateway)
    # A deleted job leaves its hour; a job whose creation time moves changes hour.
    assert (await gateway.http.delete(f"/v1/admin/jobs/{b[0]}", headers=gateway.admin)).status_code == 204
    async with gateway.state.sessionmaker() as session:
        await session.execute(
            update(Job).where(Job.id == b[1]).values(created_at=utcnow() - timedelta(hours=5))
        )
        await session.commit()
    await _counters_match_rows(gateway)
    usage = (await gateway.http.get("/v1/me", headers=bob)).json()["usage"]
    assert usage["jobs_today"] == 1 and usage["queued"] == 0 and usage["running"] == 0
    # A burst submitted at once, dispatched as it arrives.
    more = await asyncio.gather(*(gateway.generate(SLOW, headers=bob) for _ in range(4)))
    assert all(r.status_code == 202 for r in more)
    await _counters_match_rows(gateway, moving=True)
    for resp in more:
        await gateway.wait(resp.json()["id"], headers=bob, timeout=60)
    await _counters_match_rows(gateway)


async def test_hour_counters_older_than_any_quota_window_are_pruned(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    _, alice = await gw.create_user("alice")
    old, new = [(await gw.generate(BLUR, headers=alice)).json()["id"] for _ in range(2)]
    async with gw.state.sessionmaker() as session:
        await session.execute(
            update(Job).where(Job.id == old).values(created_at=utcnow() - timedelta(hours=30))
        )
        await session.commit()
    # The next hour's first refresh prunes (the refresh at start already pruned for this hour).
    gw.state.metrics.hour_counters_pruned = None
    await queue_metrics.refresh(gw.state.sessionmaker, gw.state.metrics)
    async with gw.state.sessionmaker() as session:
        hours = (
            (await session.execute(select(JobCreatedHour.hour).where(JobCreatedHour.n > 0))).scalars().all()
        )
    assert hours == [int(utcnow().timestamp()) // 3600]
    assert (await gw.http.get("/v1/me", headers=alice)).json()["usage"]["jobs_today"] == 1
