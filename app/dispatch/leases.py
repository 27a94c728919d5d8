"""Which backends this replica follows, when several replicas dispatch on one PostgreSQL.

Each backend has a lease row (app/db/leases.py). The keeper heartbeats this replica, renews the
leases it holds every quarter of GATEWAY_BACKEND_LEASE_SECONDS, and evens the backends out over
the live replicas: it gives back what is over its share and takes free or expired leases up to
it. It tells the pool (the `Owner` below) when a backend becomes its own and when it must let one
go; the pool follows only the backends it owns.

Two owners at once are impossible:
- the database: every transition of a dispatched job is conditional on the lease still being held
  at the generation its owner acted under (`Fence`, app/db/jobs.py), so a stale replica's writes
  change nothing;
- the replica itself: a lease counts as held only until three quarters of its duration after the
  renewal that was *sent* last (the database's expiry is later than that), and a timer revokes it
  then even while the event loop is busy or the database hangs. A replica paused past its lease
  (SIGSTOP) finds its leases revoked before any other task resumes, and the pool checks
  `valid()` right before every call that acts on a backend.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import leases as repo
from app.db.engine import create_sessionmaker, normalize_url
from app.db.leases import Fence, LeaseRow

log = logging.getLogger("app.dispatch.leases")

#: The part of a lease's duration for which this replica trusts a renewal it sent.
TRUSTED = 0.75


class Owner(Protocol):
    """What the keeper needs of the pool."""

    async def take_backend(self, url: str, fence: Fence) -> bool: ...

    async def drop_backend(self, url: str) -> None: ...

    def lease_lost(self, url: str) -> None: ...

    def backend_is_healthy(self, url: str) -> bool: ...


class LeaseKeeper:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        replica_id: str,
        lease_seconds: float,
        name: str | None = None,
    ) -> None:
        # Its own engine, disposed by `release_all`: see app/main.py.
        self._engine = engine
        self._sessionmaker = create_sessionmaker(engine)
        self.replica_id = replica_id
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.ttl = lease_seconds
        self.every = lease_seconds / 4
        self.held: dict[str, Fence] = {}
        # Until when (monotonic) each held lease is trusted.
        self._trusted: dict[str, float] = {}
        # The lease rows as last read: every replica's view of who follows what.
        self.snapshot: dict[str, LeaseRow] = {}
        self.live_replicas: list[str] = []
        self._owner: Owner | None = None
        self._nudge = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._transfer: asyncio.Task[None] | None = None
        self._rounds = 0
        self._stopping = False

    # ---- the small interface the pool uses -------------------------------------------------

    def valid(self, url: str, fence: Fence | None) -> bool:
        """Whether `fence` is still this replica's lease of `url`, as far as it can tell now."""
        return (
            fence is not None
            and self.held.get(url) == fence
            and time.monotonic() < self._trusted.get(url, 0.0)
        )

    def nudge(self, *_: object) -> None:
        """Another replica gave leases back or joined: rebalance now (a NOTIFY callback)."""
        self._nudge.set()

    async def start(self, owner: Owner) -> None:
        """Join: renewals start now, and this returns once the first round's hand-overs are done
        (a lone replica starts with every backend); the others hear of this replica at once, to
        hand it its share."""
        self._owner = owner
        self._task = asyncio.create_task(self._run(), name="backend leases")
        deadline = time.monotonic() + 3 * self.ttl
        while time.monotonic() < deadline and (  # noqa: ASYNC110 - two conditions, polled
            self._rounds == 0 or (self._transfer is not None and not self._transfer.done())
        ):
            await asyncio.sleep(0.02)
        try:
            async with self._sessionmaker() as session:
                await repo.announce(session)
                await session.commit()
        except Exception as exc:  # noqa: BLE001 - they find this replica at their next round
            log.warning("backend leases: announcing this replica failed (%s: %s)", type(exc).__name__, exc)

    async def stop(self) -> None:
        """Stop taking leases; the pool lets its backends go, then `release_all` gives them back."""
        self._stopping = True
        for task in (self._task, self._transfer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()

    async def release_all(self) -> None:
        """Graceful shutdown: every lease is free at once, the others take them without waiting."""
        held, self.held = dict(self.held), {}
        self._trusted.clear()
        try:
            async with self._sessionmaker() as session:
                for url, fence in held.items():
                    await repo.release(session, url, fence)
                await repo.leave(session, self.replica_id)
                await session.commit()
        except Exception:  # noqa: BLE001 - they expire by themselves then
            log.exception("giving the backend leases back failed; they expire in %.0f s", self.ttl)
        finally:
            # The keeper's own connections (app/main.py): nothing uses them after this.
            await self._engine.dispose()

    # ---- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            self._nudge.clear()
            began = time.monotonic()
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database may be away: leases run out
                log.warning("backend leases: round failed (%s: %s)", type(exc).__name__, exc)
            self._rounds += 1
            self._expire()
            # Rounds start every quarter of the lease whatever they took: a slow database must
            # not stretch the time between renewals.
            try:
                await asyncio.wait_for(
                    self._nudge.wait(), timeout=max(0.0, began + self.every - time.monotonic())
                )
            except TimeoutError:
                pass

    async def round(self) -> None:
        """Heartbeat, renew, read the leases, then give back or take to reach this replica's share."""
        assert self._owner is not None
        sent = time.monotonic()
        state = {u: (f.generation, self._owner.backend_is_healthy(u)) for u, f in self.held.items()}
        # Bounded: a database that stopped answering must not hold the loop (the timer revokes
        # the leases anyway); the pool's own work below is not cut short.
        live, kept, snapshot = await asyncio.wait_for(self._renew(state), timeout=self.ttl)
        for url in state:
            if self.held.get(url, None) is None or self.held[url].generation != state[url][0]:
                continue  # given back or taken again meanwhile (a hand-over runs beside the rounds)
            if url in kept:
                self._trusted[url] = sent + self.ttl * TRUSTED
            else:
                self._lose(url, "it was not renewed in time")
        self._arm()
        self.snapshot, self.live_replicas = snapshot, live
        if self.replica_id not in live:
            return
        if self._transfer is not None and not self._transfer.done():
            return  # the last round's hand-overs are still under way
        share = self._share(len(snapshot), live)
        give = sorted(self.held)[share:]
        free = [url for url, row in sorted(snapshot.items()) if not row.live and url not in self.held]
        take = free[: max(0, share - len(self.held))]
        if give or take:
            # On a task of its own: letting a backend go or picking one up takes the pool a while
            # (sockets, reconciliation), and renewals must not wait for it.
            self._transfer = asyncio.create_task(self._hand_over(give, take), name="lease transfer")

    async def _hand_over(self, give: list[str], take: list[str]) -> None:
        try:
            for url in give:
                await self._give_back(url)
            for url in take:
                try:
                    await self._take(url)
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except Exception as exc:  # noqa: BLE001 - one backend's trouble must not keep the others
                    log.warning("backend leases: taking %s failed (%s: %s)", url, type(exc).__name__, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            log.warning("backend leases: hand-over failed (%s: %s)", type(exc).__name__, exc)

    async def _renew(
        self, state: dict[str, tuple[int, bool]]
    ) -> tuple[list[str], set[str], dict[str, LeaseRow]]:
        async with self._sessionmaker() as session:
            # The renewal first, alone in its transaction: it is what must not wait.
            kept = await repo.renew(session, self.replica_id, state, self.ttl)
            await session.commit()
            live = await repo.heartbeat(session, self.replica_id, self.name, self.ttl)
            await repo.sync_rows(session)
            await session.commit()
            snapshot = await repo.all_leases(session)
            await session.commit()
        return live, kept, snapshot

    def _share(self, backends: int, live: list[str]) -> int:
        """Backends split evenly; the first replicas (by id) take one more when it does not divide."""
        index = live.index(self.replica_id)
        return backends // len(live) + (1 if index < backends % len(live) else 0)

    async def _take(self, url: str) -> None:
        assert self._owner is not None
        sent = time.monotonic()
        generation = await asyncio.wait_for(self._acquire(url), timeout=self.ttl)
        if generation is None:
            return  # another replica was quicker
        fence = Fence(self.replica_id, generation)
        self.held[url] = fence
        self._trusted[url] = sent + self.ttl * TRUSTED
        self._arm()
        log.info("backend %s: lease taken (generation %d)", url, generation)
        if not await self._owner.take_backend(url, fence):
            await self._give_back(url)

    async def _acquire(self, url: str) -> int | None:
        async with self._sessionmaker() as session:
            generation = await repo.acquire(session, url, self.replica_id, self.name, self.ttl)
            await session.commit()
        return generation

    async def _give_back(self, url: str) -> None:
        """Over this replica's share (another replica joined): stop following it, then free it."""
        assert self._owner is not None
        fence = self.held.get(url)
        if fence is None:
            return
        await self._owner.drop_backend(url)
        self.held.pop(url, None)
        self._trusted.pop(url, None)
        async with self._sessionmaker() as session:
            await repo.release(session, url, fence)
            await session.commit()
        log.info("backend %s: lease given back (generation %d)", url, fence.generation)

    # ---- running out -----------------------------------------------------------------------

    def _arm(self) -> None:
        """A timer at the earliest moment a held lease stops being trusted: it fires even while
        the loop is busy elsewhere or a renewal hangs on a lost database."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._trusted:
            loop = asyncio.get_running_loop()
            delay = min(self._trusted.values()) - time.monotonic()
            self._timer = loop.call_later(max(0.0, delay), self._expire)

    def _expire(self) -> None:
        now = time.monotonic()
        for url, until in list(self._trusted.items()):
            if now >= until:
                self._lose(url, "it could not be renewed before it ran out")
        self._arm()

    def _lose(self, url: str, why: str) -> None:
        fence = self.held.pop(url, None)
        self._trusted.pop(url, None)
        if fence is None or self._owner is None:
            return
        log.error("backend %s: lease lost (%s); this replica stops acting on it", url, why)
        self._owner.lease_lost(url)
        self._nudge.set()


def lock_sqlite_dispatcher(database_url: str) -> IO[str] | None:
    """SQLite means one dispatching process: a second one on the same file refuses to start.

    Holds an exclusive lock on `<database>.dispatcher.lock` for the process's life (released by
    the system when it ends, however it ends). Returns the open lock file, or None for an
    in-memory database."""
    database = make_url(normalize_url(database_url)).database
    if database in (None, "", ":memory:"):
        return None
    path = Path(f"{database}.dispatcher.lock").expanduser()
    handle = path.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise RuntimeError(
            f"Another gateway process already runs the dispatcher on the SQLite database {database}. "
            "SQLite means one dispatching process: run several dispatching replicas on PostgreSQL "
            "(GATEWAY_DATABASE_URL=postgresql+asyncpg://...), or start this one with "
            "GATEWAY_RUN_DISPATCHER=false."
        ) from None
    return handle
