"""The webhook outbox on a real database (SQLite and PostgreSQL): rows exist exactly when the job's
transition committed, and leases keep two senders from sending the same attempt."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import jobs as jobs_repo
from app.db import webhooks as repo
from app.db.engine import create_engine, create_sessionmaker
from app.db.models import Job, User, WebhookAttempt, WebhookDelivery
from app.db.types import utcnow
from app.domain import transitions


@pytest.fixture
async def maker(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def dispatched_job(
    maker: async_sessionmaker[AsyncSession], events: list[str] | None = None
) -> tuple[str, str]:
    """A job with a webhook, handed to a backend; returns its id and prompt id."""
    job_id, prompt_id, user_id = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    async with maker() as session:
        session.add(User(id=user_id, name="u", is_admin=False, disabled=False, limits={}))
        await session.flush()
        session.add(
            Job(
                id=job_id,
                user_id=user_id,
                status="queued",
                workflow={},
                params={},
                output_nodes=[],
                priority=0,
                meta={},
                attempts=0,
                cancel_requested=False,
                webhook_url="https://hooks.example/x",
                webhook_events=events,
            )
        )
        await session.commit()
        assert await jobs_repo.claim(session, job_id, backend="http://b", prompt_id=prompt_id) is not None
        await session.commit()
    return job_id, prompt_id


async def rows(maker: async_sessionmaker[AsyncSession], job_id: str) -> list[tuple[str, str]]:
    async with maker() as session:
        result = await session.execute(
            select(WebhookDelivery.event, WebhookDelivery.status)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.created_at)
        )
        return [tuple(r) for r in result]


async def test_a_delivery_exists_exactly_when_the_transition_committed(maker) -> None:  # noqa: ANN001
    job_id, prompt_id = await dispatched_job(maker, ["job.running", "job.succeeded"])
    async with maker() as session:
        assert await transitions.mark_running(session, job_id, prompt_id=prompt_id) is not None
        await session.rollback()  # the transition did not happen: neither did its delivery
    assert await rows(maker, job_id) == []

    async with maker() as session:
        await transitions.mark_running(session, job_id, prompt_id=prompt_id)
        await session.commit()
    # The backend lost it; it runs again elsewhere: still one job.running delivery.
    async with maker() as session:
        await transitions.unclaim(session, job_id, prompt_id=prompt_id, count_attempt=True)
        await jobs_repo.claim(session, job_id, backend="http://c", prompt_id="p2")
        await transitions.mark_running(session, job_id, prompt_id="p2")
        await transitions.mark_succeeded(session, job_id, prompt_id="p2")
        await session.commit()
    assert await rows(maker, job_id) == [("job.running", "pending"), ("job.succeeded", "pending")]


async def test_a_job_that_ended_before_it_was_seen_running_is_announced_running_too(maker) -> None:  # noqa: ANN001
    job_id, prompt_id = await dispatched_job(maker, ["job.running", "job.succeeded"])
    async with maker() as session:
        # The prompt ended before its start was seen: queued -> succeeded in one step.
        await transitions.mark_succeeded(session, job_id, prompt_id=prompt_id)
        await session.commit()
    assert sorted(await rows(maker, job_id)) == [("job.running", "pending"), ("job.succeeded", "pending")]
    # A job canceled before it started never ran: no job.running.
    other, _ = await dispatched_job(maker, ["job.running", "job.canceled"])
    async with maker() as session:
        await transitions.mark_canceled(session, other)
        await session.commit()
    assert await rows(maker, other) == [("job.canceled", "pending")]


async def test_a_lease_keeps_other_senders_off_until_it_expires(maker) -> None:  # noqa: ANN001
    job_id, _ = await dispatched_job(maker)
    async with maker() as session:
        await transitions.mark_canceled(session, job_id)
        await session.commit()

    async with maker() as session:
        [held] = await repo.claim_due(session, owner="A", lease_seconds=0.5, limit=10)
    assert held.event == "job.canceled"
    async with maker() as session:
        assert await repo.claim_due(session, owner="B", lease_seconds=60, limit=10) == []

    # A stalls past its lease (as a crashed sender would): B takes the delivery over.
    deadline = time.monotonic() + 30
    while True:
        async with maker() as session:
            taken = await repo.claim_due(session, owner="B", lease_seconds=60, limit=10)
        if taken:
            break
        assert time.monotonic() < deadline, "the lease never expired"
        await asyncio.sleep(0.1)
    assert [d.id for d in taken] == [held.id]

    # A comes back and tries to record its attempt: it lost the lease, so nothing is recorded.
    async with maker() as session:
        kwargs = dict(
            attempted_at=utcnow(),
            duration_ms=1.0,
            status_code=200,
            error=None,
            succeeded=True,
            next_attempt_at=None,
        )
        assert await repo.record_attempt(session, held, owner="A", **kwargs) is None
        assert (await repo.record_attempt(session, taken[0], owner="B", **kwargs)).status == "succeeded"
        await session.commit()
        assert (await session.execute(select(func.count()).select_from(WebhookAttempt))).scalar_one() == 1


async def test_concurrent_senders_claim_disjoint_deliveries(db_url: str, maker) -> None:  # noqa: ANN001
    for _ in range(12):
        job_id, _ = await dispatched_job(maker)
        async with maker() as session:
            await transitions.mark_canceled(session, job_id)
            await session.commit()
    # Two replicas: two engines, claiming at the same time, a few at a time.
    engines = [create_engine(db_url), create_engine(db_url)]
    makers = [create_sessionmaker(e) for e in engines]
    claimed: dict[str, list[str]] = {"A": [], "B": []}

    async def sender(name: str, mk: async_sessionmaker[AsyncSession]) -> None:
        while True:
            async with mk() as session:
                got = await repo.claim_due(session, owner=name, lease_seconds=60, limit=3)
            if not got:
                return
            claimed[name].extend(d.id for d in got)

    try:
        await asyncio.gather(sender("A", makers[0]), sender("B", makers[1]))
    finally:
        for engine in engines:
            await engine.dispose()
    both = claimed["A"] + claimed["B"]
    assert len(both) == 12 and len(set(both)) == 12
