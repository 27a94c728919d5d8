"""Reconciliation: the prompts we believe are on a backend, compared with what it says.

The socket is only a trigger: whenever messages may have been missed (a reconnect, a restart, a
submit whose answer was lost, a lease taken over), a backend's in-flight prompts are checked against
its `/queue` and `/history`, and each job is moved on from what the backend really did.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.comfy.errors import BackendUnavailable, ComfyError
from app.config import Settings
from app.db import jobs as repo
from app.db.models import Job
from app.dispatch.backend import BackendLink, InFlight, OutputSpec
from app.dispatch.tracker import Tracker

log = logging.getLogger("app.dispatch")


class Reconciler:
    def __init__(
        self, *, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, tracker: Tracker
    ) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.tracker = tracker

    async def reconcile_due(self, links: list[BackendLink], now: float) -> None:
        """Reconcile every backend that asks for it (and is up), and every backend whose socket
        is down while it holds prompts (at most once per retry period)."""
        for link in links:
            # While a socket is down, its prompts are followed over HTTP instead, so that a job
            # never hangs on a socket that dropped or stalled without a word.
            blind = (
                not link.connected
                and link.inflight
                and now - link.last_reconcile >= self.settings.backend_retry_seconds
            )
            if (link.needs_reconcile and link.healthy) or blind:
                link.last_reconcile = now
                try:
                    await self.reconcile(link)
                except BackendUnavailable as exc:
                    link.mark_unreachable(str(exc), self.settings.backend_retry_seconds)
                except Exception:  # noqa: BLE001 - one backend's trouble must not stop the others' round
                    # It stays to be reconciled (and gets no new work) until a round gets through.
                    log.exception("reconciling %s failed", link.url)

    async def reconcile(self, link: BackendLink) -> None:
        """Compare the prompts we believe are on the backend with what it says.

        /queue is read before /history: ComfyUI moves a prompt from its queue to its history
        under one lock, so a prompt absent from both is really unknown to it.
        """
        if not link.may_act():
            return  # the lease was lost: its new owner reconciles
        queue = await link.client.get_queue()
        running = {item.prompt_id for item in queue.running}
        pending = {item.prompt_id for item in queue.pending}
        if link.abandoned:
            # Prompts whose jobs moved elsewhere while this backend was away must not run here too.
            stale = list(link.abandoned & (running | pending))
            try:
                if stale:
                    await link.client.delete_from_queue(stale)
                    for pid in stale:
                        await link.client.interrupt(pid)
            except BackendUnavailable:
                raise
            except ComfyError as exc:
                # Refused for good: asking on every round would keep the backend from ever being used.
                log.error("removing abandoned prompts from %s failed: %s", link.url, exc)
            link.abandoned.clear()
        async with self.sessionmaker() as session:
            jobs = await repo.in_flight(session, backend=link.url)
        # Reset before the jobs, not after: a job that asks for another pass (its failure could not
        # be recorded) or a reconnect meanwhile keeps it asked for.
        link.needs_reconcile = False
        for job in jobs:
            job_pid = job.prompt_id
            if job_pid is None or job_pid in link.submitting:
                continue
            try:
                await self._reconcile_one(link, job, job_pid, running, pending)
            except BackendUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - one job must not stop the backend's reconciliation
                await self.tracker.fail_unexpected(link, job_pid, "reconciling it", exc, stop=True)
        # It answered: whatever its socket does, it is not down, and its jobs stay with it.
        link.down_since = None

    async def _reconcile_one(
        self, link: BackendLink, job: Job, pid: str, running: set[str], pending: set[str]
    ) -> None:
        flight = link.inflight.get(pid)
        if flight is None:
            flight = InFlight(job.id, job.user_id, outputs=OutputSpec.of(job))
            link.track(pid, flight)
        if pid in running:
            if job.status == "queued":
                await self.tracker.started(link, pid)
            return
        if pid in pending:
            return
        entry = await link.client.get_history(pid)
        if entry is not None:
            if pid not in link.collecting:
                await self.tracker.apply_history(link, pid, entry)
            return
        await self.tracker.requeue(link, pid, flight, count_attempt=True)
