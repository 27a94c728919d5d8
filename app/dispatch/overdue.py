"""Prompts that are given up on: those on a backend down past its grace (their jobs move to other
backends), and those running past their job's time limit (failed as `timeout`, and interrupted)."""

from __future__ import annotations

import logging
import time

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.comfy.errors import ComfyError
from app.config import Settings
from app.dispatch import job_errors
from app.dispatch.backend import fenced_session
from app.dispatch.pool import BackendPool
from app.dispatch.tracker import Tracker
from app.domain import transitions
from app.domain.events.publish import Notifier

log = logging.getLogger("app.dispatch")


class Overdue:
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        notifier: Notifier,
        pool: BackendPool,
        tracker: Tracker,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.settings = settings
        self.notifier = notifier
        self.pool = pool
        self.tracker = tracker

    async def fail_over(self) -> None:
        """Jobs on a backend that has been unreachable past the grace period go to the others."""
        now = time.monotonic()
        for link in self.pool.links:
            if (
                link.down_since is None
                or now - link.down_since < self.settings.failover_grace_seconds
                or not link.may_act()
            ):
                continue
            await self.pool.return_prepared([link])
            for pid, flight in list(link.inflight.items()):
                if pid in link.collecting:
                    continue
                log.warning(
                    "backend %s down for %.0f s: job %s moves on",
                    link.url,
                    now - link.down_since,
                    flight.job_id,
                )
                link.abandoned.add(pid)
                link.submitting.discard(pid)
                await self.tracker.requeue(link, pid, flight, count_attempt=True)

    async def enforce_deadlines(self) -> None:
        """Interrupt jobs that ran past their time limit; fail them with type `timeout`."""
        now = time.time()
        for link in self.pool.links:
            for pid, flight in list(link.inflight.items()):
                if flight.interrupt_due is not None:
                    if now > flight.interrupt_due:
                        # It was told to stop and did not: no more work until it proves healthy.
                        log.error("backend %s ignored the interrupt of prompt %s", link.url, pid)
                        flight.interrupt_due = None
                        link.mark_unreachable(
                            "ignored an interrupt", self.settings.backend_retry_seconds * 10
                        )
                    continue
                if flight.deadline is None or now < flight.deadline or not link.may_act():
                    continue
                async with fenced_session(self._sessionmaker, link) as session:
                    job = await transitions.mark_failed(
                        session,
                        flight.job_id,
                        error=job_errors.timeout(flight.timeout or 0),
                        prompt_id=pid,
                        progress=flight.progress,
                    )
                    await session.commit()
                if job is not None:
                    self.notifier.publish(job)
                flight.interrupt_due = now + self.settings.interrupt_grace_seconds
                try:
                    await link.client.interrupt(pid)
                except ComfyError as exc:
                    log.error("interrupting prompt %s on %s failed: %s", pid, link.url, exc)
                    link.mark_unreachable(
                        f"interrupt failed: {exc}", self.settings.backend_retry_seconds * 10
                    )
                    link.forget(pid)
