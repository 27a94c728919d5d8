"""Who runs next: fair shares across users, then priority and age within a user.

A first-come queue lets one user's burst of 500 jobs hold everyone else back; a per-user cap
alone does not fix that. The scheduler gives each user with waiting work a turn in proportion to
its weight (weighted round-robin by virtual time: a user's virtual time grows by 1/weight per job
dispatched, and the user with the lowest goes next). Within a user, higher priority first, then
older first. A user's running cap (jobs in flight on any backend, counted from the rows, so it
holds across backends and replicas) is never exceeded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import queue
from app.db import users as users_repo
from app.db.models import Job, User
from app.domain.read_cache import ReadCache
from app.domain.users import BOOTSTRAP_ADMIN_ID, effective_limits


def _weight(user: User, settings: Settings) -> float:
    try:
        return float(min(100, max(1, int(effective_limits(user, settings).get("weight") or 1))))
    except (TypeError, ValueError):
        return 1.0


class FairScheduler:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Virtual time per user. Kept in memory: after a restart everyone starts level, which is fair.
        self._vtime: dict[str, float] = {}
        self._weights: dict[str, float] = {}
        # Users' limits and state, read in every round but rarely changed: kept as the API's
        # callers are (app/domain/read_cache.py), forgotten when a user changes (`users_changed`)
        # and after GATEWAY_AUTH_CACHE_SECONDS in any case.
        self.users: ReadCache[User] = ReadCache(settings.auth_cache_seconds)

    async def pick(
        self, session: AsyncSession, n: int, accept: Callable[[Job], bool] | None = None
    ) -> list[Job]:
        """Up to n undispatched jobs in the order they should go, and their turns recorded.

        `accept` filters jobs that can be placed now (a capable backend is up); a job it refuses
        is passed over without costing its user a turn, so it never blocks the user's other jobs.
        """
        if n <= 0:
            return []
        waiting, in_flight = await queue.active_counts(session)
        if not waiting:
            return []
        users = await self._users(session, waiting)
        capacity = self._capacity(users, waiting, in_flight, n)
        if not capacity:
            return []
        self._level(capacity)
        return await self._take_turns(session, capacity, in_flight, n, accept)

    async def _users(self, session: AsyncSession, user_ids: Iterable[str]) -> dict[str, User]:
        found: dict[str, User] = {}
        missing = []
        for user_id in user_ids:
            user = self.users.get(user_id)
            if user is None:
                missing.append(user_id)
            else:
                found[user_id] = user
        if missing:
            generation = self.users.generation
            for user_id, user in (await users_repo.by_ids(session, missing)).items():
                self.users.put(user_id, user, generation)
                found[user_id] = user
        return found

    def _capacity(
        self, users: Mapping[str, User], waiting: Iterable[str], in_flight: Mapping[str, int], n: int
    ) -> dict[str, int]:
        """How many of its jobs each user may start now (users who may start none left out); their
        weights noted. How many it has waiting is not counted (that would scan the queue); a user
        whose jobs run out gives the turns back in `_take_turns`."""
        capacity: dict[str, int] = {}
        for user_id in waiting:
            user = users.get(user_id)
            if user is None or user.disabled:
                continue
            if user_id == BOOTSTRAP_ADMIN_ID:
                cap = n
            else:
                cap = min(
                    n, int(effective_limits(user, self.settings)["max_running"]) - in_flight.get(user_id, 0)
                )
            if cap > 0:
                capacity[user_id] = cap
                self._weights[user_id] = _weight(user, self.settings)
        return capacity

    def _level(self, capacity: Mapping[str, int]) -> None:
        """A user who was idle joins at the level of the least-served active user: no credit is
        hoarded while away, and no one is punished for having been busy before."""
        known = [self._vtime[u] for u in capacity if u in self._vtime]
        floor = min(known) if known else 0.0
        for user_id in capacity:
            self._vtime[user_id] = max(self._vtime.get(user_id, floor), floor)

    async def _take_turns(
        self,
        session: AsyncSession,
        capacity: dict[str, int],
        in_flight: Mapping[str, int],
        n: int,
        accept: Callable[[Job], bool] | None,
    ) -> list[Job]:
        """Each turn goes to the user with the lowest virtual time; a user's next jobs are read the
        first time it gets a turn, and a user whose jobs run out (or none of whose jobs can be
        placed now) drops out without costing anyone a slot."""
        taken: dict[str, int] = defaultdict(int)
        jobs_of: dict[str, list[Job]] = {}
        ordered: list[Job] = []
        while len(ordered) < n:
            candidates = [u for u in capacity if taken[u] < capacity[u]]
            if not candidates:
                break
            # Ties go to the user with less in flight: a newcomer starts at the next free slot.
            user_id = min(candidates, key=lambda u: (self._vtime[u], in_flight.get(u, 0) + taken[u], u))
            if user_id not in jobs_of:
                jobs_of[user_id] = await self._next_jobs(session, user_id, capacity[user_id], accept)
            if not jobs_of[user_id]:
                capacity[user_id] = taken[user_id]
                continue
            ordered.append(jobs_of[user_id].pop(0))
            taken[user_id] += 1
            self._vtime[user_id] += 1.0 / self._weights[user_id]
        return ordered

    @staticmethod
    async def _next_jobs(
        session: AsyncSession, user_id: str, want: int, accept: Callable[[Job], bool] | None
    ) -> list[Job]:
        """A user's next `want` jobs that `accept` takes. Usually the first `want` are all
        placeable and nothing more is read (each row comes with its graph); otherwise up to 16
        more are looked at, in case some further back can be placed right now."""
        fetched = await queue.next_jobs(session, user_id, want)
        if accept is None:
            return fetched
        accepted = [job for job in fetched if accept(job)]
        if len(accepted) < want and len(fetched) == want:
            accepted = [job for job in await queue.next_jobs(session, user_id, want + 16) if accept(job)]
        return accepted[:want]

    def give_back(self, user_id: str) -> None:
        """A picked job was not dispatched after all (claim lost, or a reserve returned)."""
        if user_id in self._vtime:
            self._vtime[user_id] -= 1.0 / self._weights.get(user_id, 1.0)
