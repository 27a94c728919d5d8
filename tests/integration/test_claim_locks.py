"""Claims and give-backs at once on PostgreSQL: they change the same per-user counter rows
(job_counts, kept by triggers) in opposite orders (queued -> dispatched, dispatched -> queued), so
without an order between them they deadlocked, and the loser's job failed. A give-back waits for
the claims' lock (app/db/state.py `lock_claims`) before it locks any row."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text

from app.db import jobs as repo
from app.db.engine import create_engine, create_sessionmaker
from app.db.models import Job, User
from app.db.state import lock_claims
from app.domain import transitions

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


async def test_a_give_back_during_a_claim_round_waits_instead_of_deadlocking(db_url: str) -> None:
    engine = create_engine(db_url)
    sessions = create_sessionmaker(engine)
    try:
        async with sessions() as session:
            session.add(User(id="u", name="u", is_admin=False, disabled=False, limits={}))
            await session.commit()
        ids = []
        for _ in range(3):
            async with sessions() as session:
                job = Job(id=str(uuid.uuid4()), user_id="u", workflow={}, params={}, meta={})
                await transitions.created(session, job)
                await session.commit()
                ids.append(job.id)
        given_back, claimed, _ = ids
        async with sessions() as session:
            assert await repo.claim(session, given_back, backend="http://gpu", prompt_id="p1")
            await session.commit()

        async with sessions() as claims:
            # A round, caught between the two halves of a claim's counter update: it holds the
            # claims' lock and the user's `queued` counter, and is about to take `dispatched`.
            await lock_claims(claims)
            await claims.execute(
                text("SELECT n FROM job_counts WHERE user_id = 'u' AND state = 'queued' FOR UPDATE")
            )

            async def give_back() -> Job | None:
                async with sessions() as session:
                    job = await transitions.unclaim(session, given_back, prompt_id="p1", count_attempt=False)
                    await session.commit()
                    return job

            back = asyncio.create_task(give_back())
            await asyncio.sleep(0.3)  # the give-back is under way
            # Without the order, the give-back now held `dispatched` and waited for `queued`,
            # and this claim (which takes `dispatched`) deadlocked with it.
            assert await repo.claim(claims, claimed, backend="http://gpu", prompt_id="p2")
            await claims.commit()
        job = await asyncio.wait_for(back, 10)
        assert job is not None and job.status == "queued" and job.backend is None
    finally:
        await engine.dispose()
