"""Who runs next, decided by the scheduler alone over a real database: the exact order of its picks.

Each round is what the dispatcher does with a pick: the picked jobs are claimed (handed to a
backend) in the same transaction, so the database's counters see them in flight at the next
round. No backend, no clock: the order is the scheduler's (weighted round-robin between users,
then priority and age within a user, under each user's running cap). The end-to-end truth, with
real backends and measured shares, is in test_fairness.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.config import Settings
from app.db import jobs as repo
from app.db.engine import create_engine, create_sessionmaker
from app.db.models import Job, User
from app.dispatch.scheduler import FairScheduler
from app.domain.users import BOOTSTRAP_ADMIN_ID

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
ROOMY = {"max_running": 100}


class Queue:
    """Users and jobs written as rows, and dispatcher-like rounds of one scheduler over them."""

    def __init__(self, maker, settings: Settings) -> None:  # noqa: ANN001
        self.maker = maker
        self.scheduler = FairScheduler(settings)
        self._created = 0

    async def user(self, user_id: str, *, disabled: bool = False, **limits: int) -> None:
        async with self.maker() as session:
            if await session.get(User, user_id) is None:
                session.add(User(id=user_id, name=user_id, is_admin=False, disabled=disabled, limits=limits))
            else:
                (await session.get(User, user_id)).limits = limits
            await session.commit()

    async def submit(self, user_id: str, *names: str, priority: int = 0) -> None:
        """Jobs named `names`, each created after every job submitted before it."""
        async with self.maker() as session:
            for name in names:
                self._created += 1
                session.add(
                    Job(
                        id=name,
                        user_id=user_id,
                        workflow={},
                        priority=priority,
                        created_at=T0 + timedelta(seconds=self._created),
                    )
                )
            await session.commit()

    async def pick(
        self, n: int, accept: Callable[[Job], bool] | None = None, *, claim: bool = True
    ) -> list[str]:
        """One round: pick up to n, claim what was picked (unless told not to), commit."""
        async with self.maker() as session:
            picked = await self.scheduler.pick(session, n, accept)
            if claim:
                for job in picked:
                    won = await repo.claim(session, job.id, backend="http://gpu", prompt_id=str(uuid.uuid4()))
                    assert won is not None
            await session.commit()
        return [job.id for job in picked]

    async def finish(self, job_id: str) -> None:
        async with self.maker() as session:
            job = await session.get(Job, job_id)
            assert job is not None
            await repo.mark_failed(session, job_id, error={"type": "test"}, prompt_id=job.prompt_id)
            await session.commit()

    async def queued(self) -> set[str]:
        async with self.maker() as session:
            rows = await session.execute(select(Job.id).where(Job.status == "queued", Job.backend.is_(None)))
            return set(rows.scalars())


@pytest.fixture
async def q(db_url: str) -> AsyncIterator[Queue]:
    engine = create_engine(db_url)
    yield Queue(create_sessionmaker(engine), Settings(database_url=db_url, _env_file=None))
    await engine.dispose()


async def test_a_burst_does_not_hold_back_a_user_who_came_later(q: Queue) -> None:
    await q.user("alice", **ROOMY)
    await q.user("bob", **ROOMY)
    await q.submit("alice", "a1", "a2", "a3", "a4", "a5", "a6")
    await q.submit("bob", "b1", "b2", "b3")
    # Turns alternate while both have work; what is left of the burst goes last.
    assert await q.pick(9) == ["a1", "b1", "a2", "b2", "a3", "b3", "a4", "a5", "a6"]


async def test_turns_carry_over_from_round_to_round(q: Queue) -> None:
    """One job per round gives the same order as one round of many: turns are remembered."""
    await q.user("alice", **ROOMY)
    await q.user("bob", **ROOMY)
    await q.submit("alice", "a1", "a2", "a3", "a4")
    await q.submit("bob", "b1", "b2")
    assert [job for _ in range(7) for job in await q.pick(1)] == ["a1", "b1", "a2", "b2", "a3", "a4"]


async def test_weights_share_turns_in_proportion(q: Queue) -> None:
    await q.user("alice", weight=2, **ROOMY)
    await q.user("bob", weight=1, **ROOMY)
    await q.submit("alice", *(f"a{i}" for i in range(1, 9)))
    await q.submit("bob", *(f"b{i}" for i in range(1, 9)))
    order = await q.pick(9)
    assert order == ["a1", "b1", "a2", "b2", "a3", "a4", "b3", "a5", "a6"]
    assert sum(j.startswith("a") for j in order) == 2 * sum(j.startswith("b") for j in order)


async def test_a_users_running_cap_holds_across_rounds(q: Queue) -> None:
    await q.user("alice", max_running=2)
    await q.user("bob", **ROOMY)
    await q.submit("alice", "a1", "a2", "a3", "a4", "a5")
    await q.submit("bob", "b1", "b2", "b3")
    # Alice's cap leaves her turns to bob instead of wasting the slots.
    assert await q.pick(10) == ["a1", "b1", "a2", "b2", "b3"]
    assert await q.pick(10) == []  # two in flight: none more for alice, and bob has nothing left
    await q.finish("a1")
    assert await q.pick(10) == ["a3"]
    assert await q.queued() == {"a4", "a5"}


async def test_a_users_limits_are_read_once_and_again_only_after_a_change_is_announced(q: Queue) -> None:
    """The scheduler keeps users' limits between rounds (they are read in every round and rarely
    change); a change counts from the round after it is announced (`users_changed`, which the
    admin routes and other replicas' NOTIFY call), and not before."""
    await q.user("alice", max_running=1)
    await q.submit("alice", "a1", "a2", "a3", "a4")
    assert await q.pick(10) == ["a1"]
    await q.user("alice", max_running=3)  # written behind the scheduler's back: not seen yet
    assert await q.pick(10) == []
    q.scheduler.users.forget_all()
    assert await q.pick(10) == ["a2", "a3"]


async def test_priority_orders_a_users_own_jobs_and_takes_no_turn_from_others(q: Queue) -> None:
    await q.user("alice", **ROOMY)
    await q.user("bob", **ROOMY)
    await q.submit("alice", "a-old", priority=0)
    await q.submit("alice", "a-high", priority=5)
    await q.submit("alice", "a-high-newer", priority=5)
    await q.submit("alice", "a-mid", priority=1)
    await q.submit("bob", "b-urgent", "b-urgent-2", priority=9)
    # Within alice: priority, then age. Between users: turns, whatever bob's priority.
    assert await q.pick(6) == ["a-high", "b-urgent", "a-high-newer", "b-urgent-2", "a-mid", "a-old"]


async def test_a_user_back_from_idle_joins_at_the_others_level(q: Queue) -> None:
    await q.user("alice", **ROOMY)
    await q.user("bob", **ROOMY)
    await q.submit("alice", *(f"a{i}" for i in range(1, 9)))
    assert await q.pick(4) == ["a1", "a2", "a3", "a4"]
    await q.submit("bob", "b1", "b2", "b3")
    # Bob was not there for alice's four turns: he gets no credit for them (no run of b's), and
    # as the one with less in flight he goes first.
    assert await q.pick(4) == ["b1", "a5", "b2", "a6"]


async def test_a_job_that_cannot_be_placed_costs_its_user_no_turn(q: Queue) -> None:
    await q.user("alice", **ROOMY)
    await q.user("bob", **ROOMY)
    await q.submit("alice", "a-needs-other-gpu", "a2", "a3")
    await q.submit("bob", "b1", "b2")
    assert await q.pick(4, accept=lambda job: job.id != "a-needs-other-gpu") == ["a2", "b1", "a3", "b2"]
    assert await q.queued() == {"a-needs-other-gpu"}


async def test_a_user_with_nothing_placeable_leaves_the_slots_to_others(q: Queue) -> None:
    await q.user("alice", **ROOMY)
    await q.user("bob", **ROOMY)
    await q.submit("alice", "a1", "a2")
    await q.submit("bob", "b1", "b2", "b3")
    assert await q.pick(3, accept=lambda job: job.user_id == "bob") == ["b1", "b2", "b3"]


async def test_disabled_users_wait_and_the_bootstrap_admin_has_no_running_cap(q: Queue) -> None:
    await q.user(BOOTSTRAP_ADMIN_ID, max_running=1)
    await q.user("carol", disabled=True, **ROOMY)
    await q.submit("carol", "c1")
    await q.submit(BOOTSTRAP_ADMIN_ID, "x1", "x2", "x3")
    assert await q.pick(5) == ["x1", "x2", "x3"]
    assert await q.queued() == {"c1"}


async def test_a_turn_given_back_is_the_users_again(q: Queue) -> None:
    """A picked job that was not dispatched (its claim lost, a reserve returned) costs no turn."""
    await q.user("alice", **ROOMY)
    await q.user("bob", **ROOMY)
    await q.submit("alice", "a1", "a2")
    await q.submit("bob", "b1", "b2")
    assert await q.pick(1, claim=False) == ["a1"]
    q.scheduler.give_back("alice")
    assert await q.pick(1, claim=False) == ["a1"]
    # Not given back: the turn is spent, and bob is next.
    assert await q.pick(1, claim=False) == ["b1"]
