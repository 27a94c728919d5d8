"""The hot statements run on the driver's connection (app/db/driver.py) on SQLite and through the
session on PostgreSQL: either way they write and read the values SQLAlchemy's own path does, and
they belong to the session's transaction (its commit keeps them, its rollback undoes them)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import jobs as repo
from app.db import queue
from app.db.engine import create_engine, create_sessionmaker
from app.db.models import Job, JobEvent, Output, User
from app.domain import transitions


@pytest.fixture
async def sessions(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_url)
    sessions = create_sessionmaker(engine)
    async with sessions() as session:
        session.add(User(id="u1", name="one"))
        session.add(User(id="u2", name="two"))
        await session.commit()
    yield sessions
    await engine.dispose()


def _job(**values: object) -> Job:
    return Job(
        id=str(uuid.uuid4()),
        user_id="u1",
        template="t",
        params={"prompt": "ü ☃", "n": [1, 2.5, None, True]},
        workflow={"1": {"class_type": "EmptyImage", "inputs": {}}},
        **values,
    )


async def _stored(sessions: async_sessionmaker[AsyncSession], **values: object) -> Job:
    """A new job, inserted (with its first event) and committed."""
    job = _job(**values)
    async with sessions() as session:
        await transitions.created(session, job)
        await session.commit()
    return job


async def test_a_job_inserted_on_the_driver_reads_back_as_the_orm_wrote_it(sessions) -> None:  # noqa: ANN001
    job = await _stored(sessions, priority=3, timeout_seconds=1.5, meta={"k": "v"})
    async with sessions() as session:
        row = (await session.execute(select(Job).where(Job.id == job.id))).scalar_one()
        event = (await session.execute(select(JobEvent).where(JobEvent.job_id == job.id))).scalar_one()
    assert row.params == {"prompt": "ü ☃", "n": [1, 2.5, None, True]}
    assert (row.priority, row.timeout_seconds, row.meta, row.status) == (3, 1.5, {"k": "v"}, "queued")
    assert row.cancel_requested is False
    assert row.created_at == job.created_at
    assert row.created_at.tzinfo is not None
    assert row.started_at is None
    assert (event.seq, event.event, event.data["status"]) == (1, "status", "queued")
    # The dispatcher's read of the user's next jobs: the graph and the inputs come with them.
    async with sessions() as session:
        (picked,) = await queue.next_jobs(session, "u1", 5)
        assert await queue.next_jobs(session, "u2", 5) == []
    assert picked.id == job.id and picked.workflow == job.workflow and picked.inputs == []
    assert picked.params == job.params and picked.created_at == job.created_at


async def test_a_transition_returns_the_row_with_aware_times_and_decoded_values(sessions) -> None:  # noqa: ANN001
    job = await _stored(sessions)
    async with sessions() as session:
        won = await repo.claim(session, job.id, backend="http://b", prompt_id="p1")
        await session.commit()
    assert won == job.id
    before = datetime.now(UTC)
    async with sessions() as session:
        running = await transitions.mark_running(session, job.id, prompt_id="p1")
        await session.commit()
    assert running is not None
    assert (running.status, running.backend, running.prompt_id, running.attempts) == (
        "running",
        "http://b",
        "p1",
        1,
    )
    assert running.started_at is not None and running.started_at >= before.replace(microsecond=0)
    assert running.started_at.tzinfo is not None
    assert running.params == job.params
    assert running.event_seq == 2
    # The condition holds no more: nothing changes, nothing is returned.
    async with sessions() as session:
        assert await transitions.mark_running(session, job.id, prompt_id="p1") is None
        assert await repo.claim(session, job.id, backend="http://b", prompt_id="p2") is None


async def test_an_object_the_session_holds_is_brought_up_to_date_by_a_transition(sessions) -> None:  # noqa: ANN001
    job = await _stored(sessions)
    async with sessions() as session:
        held = await repo.get_job(session, job.id)
        assert held is not None and held.status == "queued"
        changed = await transitions.mark_canceled(session, job.id)
        assert changed is held
        assert held.status == "canceled" and held.finished_at is not None


async def test_a_rollback_undoes_the_statements_run_on_the_driver(sessions) -> None:  # noqa: ANN001
    job = _job()
    async with sessions() as session:
        await transitions.created(session, job)
        await session.rollback()
    async with sessions() as session:
        assert await repo.get_job(session, job.id) is None
        assert (await session.execute(select(JobEvent))).scalars().all() == []


async def test_a_duplicate_row_fails_as_sqlalchemy_reports_it_and_changes_nothing(sessions) -> None:  # noqa: ANN001
    job = await _stored(sessions)
    again = _job()
    again.id = job.id
    async with sessions() as session:
        with pytest.raises(IntegrityError):
            await transitions.created(session, again)
        await session.rollback()
    async with sessions() as session:
        assert len((await session.execute(select(JobEvent))).scalars().all()) == 1


async def test_an_output_is_found_only_under_its_job_and_for_its_owner(sessions) -> None:  # noqa: ANN001
    job = _job()
    async with sessions() as session:
        await transitions.created(session, job)
        await repo.claim(session, job.id, backend="http://b", prompt_id="p1")
        out = Output(
            id=str(uuid.uuid4()),
            job_id=job.id,
            node_id="9",
            filename="a.png",
            content_type="image/png",
            size=68,
            sha256="0" * 64,
            storage_key=f"{job.id}/a.png",
        )
        assert await transitions.mark_succeeded(session, job.id, prompt_id="p1", outputs=[out]) is not None
        await session.commit()
    async with sessions() as session:
        found = await repo.get_output(session, job.id, out.id, user_id="u1")
        assert found is not None
        assert (found.filename, found.size, found.kind, found.created_at) == (
            "a.png",
            68,
            "images",
            out.created_at,
        )
        assert await repo.get_output(session, job.id, out.id, user_id="u2") is None
        assert await repo.get_output(session, str(uuid.uuid4()), out.id, user_id=None) is None
