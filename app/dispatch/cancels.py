"""Canceled jobs taken off their backends.

A cancel commits in the API (the row says `canceled`, with `cancel_requested`); the prompt leaves
its backend here: dropped if it was only claimed in reserve, otherwise deleted from the backend's
queue and interrupted. All of a backend's deletes go before any of its interrupts: an interrupt
lets the backend start its next pending prompt, which must not be another canceled one still
queued there. With leases, each replica cleans only the backends it owns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.comfy.errors import BackendUnavailable, ComfyError
from app.config import Settings
from app.db import jobs as repo
from app.db.models import Job
from app.dispatch.backend import BackendLink
from app.dispatch.pool import BackendPool

log = logging.getLogger("app.dispatch")


class CancelCleanup:
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        pool: BackendPool,
        wake: Callable[[], None],
    ) -> None:
        """`wake`: asks the dispatcher for a round now (a slot came free)."""
        self._sessionmaker = sessionmaker
        self.settings = settings
        self.pool = pool
        self.wake = wake
        # Canceled jobs are looked for when this process canceled one, and once per poll for
        # cancels made through other replicas: not on every round (a query per job otherwise).
        self._hint = True
        self._next_scan = 0.0

    def due(self, now: float) -> bool:
        """Whether this round looks for canceled jobs."""
        if not (self._hint or now >= self._next_scan):
            return False
        self._hint = False
        self._next_scan = now + self.settings.dispatch_poll_seconds
        return True

    def canceled(self, job: Job) -> None:
        """A cancel committed in this process: a reserve of the job is dropped now, the rest is
        cleaned at the next round."""
        for link in self.pool.links:
            for item in list(link.prepared):
                if item.job_id == job.id:
                    link.drop_prepared(item.prompt_id)
        self._hint = True

    async def run(self) -> None:
        """Take canceled jobs off their backends: delete from its queue, and interrupt it by prompt id.

        All of a backend's deletes go before any of its interrupts: an interrupt lets the backend
        start its next pending prompt, which must not be another canceled one still queued there.
        With leases, only this replica's backends: the others' owners clean theirs."""
        owned = None if self.pool.leases is None else [link.url for link in self.pool.links]
        if self.pool.leases is not None:
            await self._take_off_deleted()
        async with self._sessionmaker() as session:
            jobs = await repo.canceled_needing_cleanup(session, backends=owned)
        groups: dict[str, tuple[BackendLink, list[Job]]] = {}
        for job in jobs:
            link = self.pool.by_url.get(job.backend or "")
            if link is None and self.pool.leases is not None and job.backend in self.pool.registered:
                continue  # another replica's backend: its owner takes the prompt off
            if link is None or link.drop_prepared(job.prompt_id or ""):
                await self._done(job)
            elif link.healthy and job.prompt_id not in link.submitting and link.may_act():
                groups.setdefault(link.url, (link, []))[1].append(job)
        for link, group in groups.values():
            if not await self._take_off_all(link, [job.prompt_id or "" for job in group], "canceled"):
                continue
            for job in group:
                link.forget(job.prompt_id or "")
                await self._done(job)

    async def _take_off_all(self, link: BackendLink, pids: list[str], what: str) -> bool:
        """All deletes before any interrupt: an interrupt lets the backend start its next pending
        prompt, which must not be one of these still queued. False when the backend could not be
        reached (the prompts stay to be taken off next time); true otherwise, done or not (an
        error that is not transient would not pass by trying every round)."""
        try:
            await link.client.delete_from_queue(pids)
            for pid in pids:
                await link.client.interrupt(pid)
        except BackendUnavailable as exc:
            link.mark_unreachable(str(exc), self.settings.backend_retry_seconds)
            return False
        except Exception:  # noqa: BLE001 - see above
            log.exception("taking the prompts of %s jobs %s off %s failed", what, pids, link.url)
        return True

    async def _take_off_deleted(self) -> None:
        """Jobs an admin deleted through another replica while they were on this replica's
        backends: that replica does not follow them, and with the row gone no cancel is left to
        find, so their prompts are taken off here and their slots freed."""
        followed: dict[str, tuple[BackendLink, str]] = {}
        for link in self.pool.links:
            reserved = {item.prompt_id for item in link.prepared}
            for pid, flight in link.inflight.items():
                if pid in link.collecting or (pid in link.submitting and pid not in reserved):
                    continue  # its collection or POST ends first; the next scan sees it
                followed[flight.job_id] = (link, pid)
        if not followed:
            return
        async with self._sessionmaker() as session:
            present = await repo.existing_ids(session, list(followed))
        groups: dict[str, tuple[BackendLink, list[str]]] = {}
        for job_id, (link, pid) in followed.items():
            if job_id not in present and not link.drop_prepared(pid) and link.may_act():
                groups.setdefault(link.url, (link, []))[1].append(pid)
        for link, pids in groups.values():
            if not await self._take_off_all(link, pids, "deleted (through another replica)"):
                continue
            for pid in pids:
                link.forget(pid)
            self.wake()

    async def _done(self, job: Job) -> None:
        async with self._sessionmaker() as session:
            await repo.cleanup_done(session, job.id)
            await session.commit()

    async def take_off(self, job: Job) -> None:
        """An admin deletes a canceled job now: its prompt leaves its backend here, because once the
        row is gone the cleanup of cancels has nothing to find. Best effort: a backend that does not
        answer may still run it, unfollowed."""
        link = self.pool.by_url.get(job.backend or "")
        if link is None or not job.prompt_id or link.drop_prepared(job.prompt_id) or not link.may_act():
            return
        try:
            await link.client.delete_from_queue([job.prompt_id])
            await link.client.interrupt(job.prompt_id)
        except ComfyError as exc:
            log.warning("job %s: taking prompt %s off %s failed: %s", job.id, job.prompt_id, link.url, exc)
        link.forget(job.prompt_id)
        self.wake()
