"""The dispatcher: a supervised loop that hands queued jobs to backends and cleans up cancels.

A job is claimed (a conditional UPDATE that sets its backend and a fresh prompt id) and the
claim is committed *before* `POST /prompt`, so the tracker knows the prompt id when the first
WebSocket message arrives, and a crash between the two is found by reconciliation.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Coroutine
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.comfy.client import ComfyClient
from app.comfy.errors import BackendUnavailable, ComfyError, PromptRejected
from app.comfy.websocket import ComfyWebSocket
from app.config import Settings
from app.db import jobs as repo
from app.db.models import Job
from app.dispatch import job_errors
from app.dispatch.backend import BackendLink, InFlight
from app.dispatch.tracker import DispatchContext, Tracker
from app.domain.notify import Notifier
from app.metrics import Metrics
from app.storage.local import LocalStorage

log = logging.getLogger("app.dispatch")


class Dispatcher:
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        storage: LocalStorage,
        notifier: Notifier,
        metrics: Metrics,
        client_ids: dict[str, str],
    ) -> None:
        self.settings = settings
        self._sessionmaker = sessionmaker
        self._wake_event = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._main: asyncio.Task[None] | None = None
        self._stopping = False
        self.links: list[BackendLink] = [
            BackendLink(
                url=url,
                client_id=client_ids[url],
                client=ComfyClient(url, timeout=settings.backend_timeout_seconds),
                ws=ComfyWebSocket(url, client_ids[url]),
            )
            for url in settings.comfyui_urls
        ]
        self._by_url = {link.url: link for link in self.links}
        self.ctx = DispatchContext(
            sessionmaker=sessionmaker,
            settings=settings,
            storage=storage,
            notifier=notifier,
            metrics=metrics,
            spawn=self._spawn,
            wake=self.wake,
        )
        self.tracker = Tracker(self.ctx)

    # ---- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self._load_inflight()
        for link in self.links:
            self.ctx.metrics.backend_up.labels(link.url).set(0)
            self._spawn(self.tracker.follow(link), f"follow {link.url}")
        self._main = asyncio.create_task(self.run(), name="dispatcher")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking work; what is in flight stays recorded and is reconciled on the next start."""
        self._stopping = True
        self.wake()
        if self._main is not None:
            self._main.cancel()
        for link in self.links:
            await link.ws.close()
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._main is not None:
            await asyncio.gather(self._main, return_exceptions=True)
        for link in self.links:
            await link.client.aclose()

    def wake(self) -> None:
        self._wake_event.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def run(self) -> None:
        """The supervised loop: one failed round is logged and retried, never fatal."""
        while not self._stopping:
            self._wake_event.clear()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("dispatcher round failed")
                await asyncio.sleep(min(self.settings.dispatch_poll_seconds, 1.0))
            try:
                await asyncio.wait_for(self._wake_event.wait(), timeout=self.settings.dispatch_poll_seconds)
            except TimeoutError:
                pass

    async def _load_inflight(self) -> None:
        """Rebuild what is on each backend from the rows: the database is the truth after a restart."""
        async with self._sessionmaker() as session:
            jobs = await repo.in_flight(session)
        for job in jobs:
            link = self._by_url.get(job.backend or "")
            if link is not None and job.prompt_id:
                link.track(job.prompt_id, InFlight(job.id, job.user_id))
                link.needs_reconcile = True

    # ---- one round -------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Reconcile backends that need it, clean up cancels, dispatch into free slots.

        Returns how many jobs were handed to backends.
        """
        for link in self.links:
            if link.needs_reconcile and link.healthy:
                try:
                    await self.tracker.reconcile(link)
                except BackendUnavailable as exc:
                    link.mark_unreachable(str(exc), self.settings.backend_retry_seconds)
        await self._cleanup_cancels()
        return await self._dispatch()

    async def _dispatch(self) -> int:
        cap = self.settings.max_inflight_per_backend
        ready = [link for link in self.links if link.healthy and not link.needs_reconcile and link.free_slots(cap)]
        if not ready:
            return 0
        free = {link.url: link.free_slots(cap) for link in ready}
        assigned: dict[str, list[tuple[Job, str]]] = defaultdict(list)
        async with self._sessionmaker() as session:
            for job in await repo.next_queued(session, sum(free.values())):
                # Least loaded first: the backend with the most free slots.
                url = max(free, key=lambda u: free[u])
                if free[url] == 0:
                    break
                prompt_id = str(uuid.uuid4())
                if await repo.claim(session, job.id, backend=url, prompt_id=prompt_id) is not None:
                    free[url] -= 1
                    assigned[url].append((job, prompt_id))
            await session.commit()
        for url, items in assigned.items():
            link = self._by_url[url]
            for job, prompt_id in items:
                link.track(prompt_id, InFlight(job.id, job.user_id))
                link.submitting.add(prompt_id)
            self.ctx.metrics.backend_inflight.labels(url).set(len(link.slots))
        # One backend's prompts in order (ComfyUI numbers them as they come); backends in parallel.
        await asyncio.gather(*(self._submit_all(self._by_url[url], items) for url, items in assigned.items()))
        return sum(len(items) for items in assigned.values())

    async def _submit_all(self, link: BackendLink, items: list[tuple[Job, str]]) -> None:
        for job, prompt_id in items:
            await self._submit(link, job, prompt_id)

    async def _submit(self, link: BackendLink, job: Job, prompt_id: str) -> None:
        flight = link.inflight[prompt_id]
        try:
            await link.client.queue_prompt(job.workflow, prompt_id=prompt_id, client_id=link.client_id)
        except PromptRejected as exc:
            link.submitting.discard(prompt_id)
            await self.tracker.fail(link, prompt_id, job_errors.invalid_workflow(exc.error, exc.node_errors))
            return
        except BackendUnavailable as exc:
            link.submitting.discard(prompt_id)
            link.mark_unreachable(str(exc), self.settings.backend_retry_seconds)
            if not exc.request_sent:
                # It never left the gateway: back to the queue, and this was no attempt.
                await self.tracker.requeue(link, prompt_id, flight, count_attempt=False)
            # Otherwise the backend may have it: reconciliation (needs_reconcile) decides.
            return
        except ComfyError as exc:
            link.submitting.discard(prompt_id)
            link.mark_unreachable(str(exc), self.settings.backend_retry_seconds)
            return
        link.submitting.discard(prompt_id)
        link.mark_reachable()

    # ---- cancels ---------------------------------------------------------------------------

    async def _cleanup_cancels(self) -> None:
        """Take canceled jobs off their backends: delete from its queue, and interrupt it by prompt id."""
        async with self._sessionmaker() as session:
            jobs = await repo.canceled_needing_cleanup(session)
        for job in jobs:
            link = self._by_url.get(job.backend or "")
            if link is not None:
                if not link.healthy or job.prompt_id in link.submitting:
                    continue
                try:
                    await link.client.delete_from_queue([job.prompt_id])
                    await link.client.interrupt(job.prompt_id)
                except BackendUnavailable as exc:
                    link.mark_unreachable(str(exc), self.settings.backend_retry_seconds)
                    continue
                link.forget(job.prompt_id)
            async with self._sessionmaker() as session:
                await repo.cleanup_done(session, job.id)
                await session.commit()

    async def job_canceled(self, job_id: str) -> None:
        """Called after an API cancel committed: tell subscribers, and clean up on the backend now."""
        await self.ctx.notifier.job_changed(job_id)
        self.wake()

    # ---- views for the API -----------------------------------------------------------------

    def backend_health(self) -> dict[str, bool]:
        return {link.url: link.healthy for link in self.links}

    def object_info(self) -> dict[str, Any] | None:
        for link in self.links:
            if link.object_info:
                return link.object_info
        return None
