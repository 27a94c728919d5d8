"""Whether each backend is up, and what it can run: /system_stats checks and /object_info reads.

The pool runs both on timers for every backend it follows; the tracker asks for them too when a
backend's socket comes up (its node definitions) or drops (is it gone, or only its socket?).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.comfy.errors import ComfyError
from app.config import Settings
from app.db import backends as backends_repo
from app.db.types import utcnow
from app.dispatch.backend import BackendLink
from app.dispatch.capabilities import Capabilities
from app.dispatch.tasks import TaskSupervisor
from app.metrics import Metrics

log = logging.getLogger("app.dispatch")


class BackendHealth:
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        metrics: Metrics,
        tasks: TaskSupervisor,
        wake: Callable[[], None],
    ) -> None:
        """`wake`: asks the dispatcher for a round now (a backend came back, or became usable)."""
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.metrics = metrics
        self.tasks = tasks
        self.wake = wake

    async def check(self, link: BackendLink) -> None:
        try:
            await link.client.system_stats()
        except ComfyError as exc:
            link.last_check_ok = False
            link.check_failures += 1
            if link.check_failures == link.health_failures:
                log.error("backend %s is down after %d failed checks: %s", link.url, link.check_failures, exc)
                if link.down_since is None:
                    link.down_since = time.monotonic()
            self.metrics.backend_up.labels(link.url).set(int(link.healthy))
            return
        was_healthy = link.healthy
        link.last_check_ok = True
        link.check_failures = 0
        link.down_since = None
        if link.capabilities is None:
            await self.refresh_object_info(link)
        self.metrics.backend_up.labels(link.url).set(int(link.healthy))
        if link.healthy and not was_healthy:
            link.needs_reconcile = True
            self.wake()

    async def refresh_object_info(self, link: BackendLink) -> None:
        # The attempt counts, so that a backend that fails to answer is not asked in a tight loop.
        link.capabilities_refreshed = time.monotonic()
        try:
            info = await link.client.object_info()
        except ComfyError as exc:
            log.warning("object_info of %s: %s", link.url, exc)
            return
        link.object_info = info
        link.capabilities = Capabilities.from_object_info(info)
        link.capabilities_at = utcnow()
        await self._record_capabilities(link, link.capabilities)
        # A backend's node definitions are hundreds of thousands of long-lived objects: out of the
        # garbage collector's sight, full collections do not pause every live stream to walk them
        # (50 backends' definitions: 0.3 s per full collection; bench/sse.py showed the pauses).
        gc.freeze()
        self.wake()

    async def _record_capabilities(self, link: BackendLink, caps: Capabilities) -> None:
        """Into the backends table when they changed: replicas that do not follow this backend
        read them there, to tell a job that can run nowhere from one that waits for a backend."""
        digest = caps.digest()
        if digest == link.capabilities_digest or not link.may_act():
            return
        try:
            async with self.sessionmaker() as session:
                await backends_repo.publish_capabilities(session, link.url, digest, caps.to_json())
                await session.commit()
        except Exception as exc:  # noqa: BLE001 - this replica routes with them anyway; retried at the next read
            log.warning("recording the capabilities of %s failed: %s", link.url, exc)
            return
        link.capabilities_digest = digest

    async def check_forever(self, link: BackendLink) -> None:
        while not self.tasks.closing:
            await self.check(link)
            link.observe_health()
            await asyncio.sleep(self.settings.health_check_seconds)

    async def refresh_forever(self, link: BackendLink) -> None:
        """Model files come and go on a running ComfyUI: re-read /object_info now and then, so a
        new file is routable without a restart (a reconnect re-reads it too)."""
        period = self.settings.object_info_refresh_seconds
        while not self.tasks.closing:
            # Sleeps until `period` after the last read, whoever made it (connect, health, timer).
            due = link.capabilities_refreshed + period - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)
            elif link.healthy:
                await self.refresh_object_info(link)
            else:
                # A backend that is down is read again when it comes back (on connect).
                await asyncio.sleep(min(period, self.settings.health_check_seconds))
