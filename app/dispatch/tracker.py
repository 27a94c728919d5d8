"""Following prompts on a backend: WebSocket messages become job transitions.

The WebSocket is fast but lossy (it drops, it replays nothing, ComfyUI may restart), so it is
only a trigger: outputs are always taken from `/history` (the truth), and whenever messages may
have been missed the in-flight prompts are reconciled with `/queue` and `/history`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.comfy.errors import BackendUnavailable, ComfyError, NotFound
from app.comfy.messages import (
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    Preview,
    Progress,
    Status,
)
from app.comfy.models import HistoryEntry
from app.comfy.websocket import Connected, Disconnected
from app.config import Settings
from app.db import backends as backends_repo
from app.db import jobs as repo
from app.db.leases import FENCE_KEY
from app.db.models import Job
from app.db.types import utcnow
from app.dispatch import job_errors
from app.dispatch.backend import BackendLink, InFlight, OutputSpec
from app.dispatch.capabilities import Capabilities
from app.dispatch.collector import OutputTooLarge, collect
from app.domain import transitions
from app.domain.events.publish import Notifier
from app.metrics import Metrics
from app.storage.base import Storage

log = logging.getLogger("app.dispatch")


@dataclass
class DispatchContext:
    sessionmaker: async_sessionmaker[AsyncSession]
    settings: Settings
    storage: Storage
    notifier: Notifier
    metrics: Metrics
    spawn: Callable[[Coroutine[Any, Any, Any], str], object]
    wake: Callable[[], None]

    def session(self, link: BackendLink) -> AsyncSession:
        """A session for the transitions of a backend's jobs: under its lease's fence, if leased
        (each transition then commits only while the lease is still held at that generation)."""
        if link.fence is None:
            return self.sessionmaker()
        return self.sessionmaker(info={FENCE_KEY: link.fence})


class Tracker:
    def __init__(self, ctx: DispatchContext) -> None:
        self.ctx = ctx

    # ---- the socket ------------------------------------------------------------------------

    async def follow(self, link: BackendLink) -> None:
        """Consume the backend's socket until it is closed.

        The reader itself never waits for the database: it updates in-memory state (a finished
        prompt frees its slot at once) and hands database work to tasks. Conditional updates make
        their order irrelevant: a late `running` cannot overwrite `succeeded`.
        """
        async for event in link.ws.events():
            try:
                await self.handle(link, event)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the backend's tracking
                pid = getattr(event, "prompt_id", None)
                if link.job_of(pid) is None:
                    log.exception("handling %s from %s", type(event).__name__, link.url)
                    continue
                # A message about one of our prompts that could not be handled: its job can no
                # longer be followed, so it fails now and frees its slot instead of holding it.
                self._ended_on_backend(link, pid)
                self.ctx.spawn(
                    self.fail_unexpected(link, pid, f"handling {type(event).__name__}", exc, stop=True),
                    f"failed {pid}",
                )

    async def handle(self, link: BackendLink, msg: object) -> None:
        match msg:
            case Connected():
                link.connected = True
                link.mark_reachable()
                link.observe_health()
                link.needs_reconcile = True
                self.ctx.metrics.backend_up.labels(link.url).set(1)
                self.ctx.spawn(self.refresh_object_info(link), f"object_info {link.url}")
                self.ctx.wake()
            case Disconnected(reason=reason):
                link.connected = False
                link.last_error = reason
                link.observe_health()
                if link.down_since is None:
                    link.down_since = time.monotonic()
                # Is it gone, or only its socket? Ask now rather than at the next scheduled check.
                self.ctx.spawn(self.check_health(link), f"health {link.url}")
                self.ctx.metrics.backend_up.labels(link.url).set(0)
                log.warning("lost the socket of %s: %s", link.url, reason)
            case Status(queue_remaining=remaining):
                link.queue_remaining = remaining
            case ExecutionStart(prompt_id=pid) if (flight := link.job_of(pid)) is not None:
                flight.last_progress_persist = time.monotonic()
                if flight.timeout is not None:
                    flight.deadline = time.time() + flight.timeout
                self.ctx.spawn(
                    self._guarded(link, pid, "recording its start", self._started(link, pid)),
                    f"running {pid}",
                )
            case Progress(prompt_id=pid, node=node, value=value, max=maximum):
                self._progress(link, pid, {"value": value, "max": maximum, "node": node})
            case ExecutionCached(prompt_id=pid, nodes=nodes) if (flight := link.job_of(pid)) is not None:
                flight.nodes_done.update(nodes)
            case Executing(prompt_id=pid, node=node) if (
                node is not None and (flight := link.job_of(pid)) is not None
            ):
                # A node starts: the one before it is done.
                if flight.current_node is not None:
                    flight.nodes_done.add(flight.current_node)
                flight.current_node = node
                self.ctx.notifier.node_started(
                    flight.job_id,
                    flight.user_id,
                    {
                        "value": 0,
                        "max": 1,
                        "node": node,
                        "node_start": True,
                        "nodes_done": len(flight.nodes_done),
                        "current_node": node,
                    },
                )
            case Preview(prompt_id=pid) as preview if (flight := link.job_of(pid)) is not None:
                # Previews with metadata (event 4, which we ask for) say whose they are; others are dropped.
                self.ctx.notifier.preview(
                    flight.job_id, flight.user_id, preview.image_type, preview.image, preview.node_id
                )
            case ExecutionSuccess(prompt_id=pid):
                if (flight := link.job_of(pid)) is not None:
                    flight.succeeded = True
            case Executing(prompt_id=pid, node=None) if pid:
                # Sent after ComfyUI stored the history entry: the moment to collect.
                if link.job_of(pid) is not None:
                    self._ended_on_backend(link, pid)
                    self.ctx.spawn(self.finish(link, pid), f"finish {pid}")
            case ExecutionError(prompt_id=pid) as err if link.job_of(pid) is not None:
                self._ended_on_backend(link, pid)
                error = job_errors.execution_error(
                    node_id=err.node_id,
                    node_type=err.node_type,
                    exception_type=err.exception_type,
                    message=err.exception_message,
                )
                self.ctx.spawn(
                    self._guarded(link, pid, "recording its failure", self.fail(link, pid, error)),
                    f"failed {pid}",
                )
            case ExecutionInterrupted(prompt_id=pid) if link.job_of(pid) is not None:
                self._ended_on_backend(link, pid)
                self.ctx.spawn(
                    self._guarded(link, pid, "recording its interruption", self._interrupted(link, pid)),
                    f"interrupted {pid}",
                )
            case _:
                pass

    async def check_health(self, link: BackendLink) -> None:
        try:
            await link.client.system_stats()
        except ComfyError as exc:
            link.last_check_ok = False
            link.check_failures += 1
            if link.check_failures == link.health_failures:
                log.error("backend %s is down after %d failed checks: %s", link.url, link.check_failures, exc)
                if link.down_since is None:
                    link.down_since = time.monotonic()
            self.ctx.metrics.backend_up.labels(link.url).set(int(link.healthy))
            return
        was_healthy = link.healthy
        link.last_check_ok = True
        link.check_failures = 0
        link.down_since = None
        if link.capabilities is None:
            await self.refresh_object_info(link)
        self.ctx.metrics.backend_up.labels(link.url).set(int(link.healthy))
        if link.healthy and not was_healthy:
            link.needs_reconcile = True
            self.ctx.wake()

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
        self.ctx.wake()

    async def _record_capabilities(self, link: BackendLink, caps: Capabilities) -> None:
        """Into the backends table when they changed: replicas that do not follow this backend
        read them there, to tell a job that can run nowhere from one that waits for a backend."""
        digest = caps.digest()
        if digest == link.capabilities_digest or not link.may_act():
            return
        try:
            async with self.ctx.sessionmaker() as session:
                await backends_repo.publish_capabilities(session, link.url, digest, caps.to_json())
                await session.commit()
        except Exception as exc:  # noqa: BLE001 - this replica routes with them anyway; retried at the next read
            log.warning("recording the capabilities of %s failed: %s", link.url, exc)
            return
        link.capabilities_digest = digest

    # ---- transitions -----------------------------------------------------------------------

    async def _guarded(
        self, link: BackendLink, pid: str | None, stage: str, work: Coroutine[Any, Any, Any]
    ) -> None:
        try:
            await work
        except Exception as exc:  # noqa: BLE001 - see fail_unexpected
            await self.fail_unexpected(link, pid, stage, exc, stop=True)

    async def fail_unexpected(
        self, link: BackendLink, pid: str | None, stage: str, exc: BaseException, *, stop: bool = False
    ) -> None:
        """An unexpected error while handling one prompt: that job fails (`internal_error`) and its
        slot is freed; nothing else is held up. `stop`: the prompt may still be on the backend, so
        it is taken off (after the failure is recorded, so that its interruption is not taken for
        someone else's)."""
        flight = link.job_of(pid)
        log.error(
            "job %s (prompt %s on %s): unexpected error while %s",
            flight.job_id if flight else "?",
            pid,
            link.url,
            stage,
            exc_info=exc,
        )
        if flight is None or pid is None:
            return
        link.submitting.discard(pid)
        try:
            await self.fail(link, pid, job_errors.internal_error())
        except Exception:  # noqa: BLE001
            # Most likely the database: reconciliation finds the row still active and decides again.
            log.exception("job %s: its failure could not be recorded; it is reconciled later", flight.job_id)
            link.forget(pid)
            link.needs_reconcile = True
            self.ctx.wake()
            return
        if stop and link.may_act():
            try:
                await link.client.delete_from_queue([pid])
                await link.client.interrupt(pid)
            except Exception as err:  # noqa: BLE001 - best effort: the job's outcome is recorded
                log.warning("taking prompt %s off %s failed: %s", pid, link.url, err)

    async def _started(self, link: BackendLink, pid: str | None) -> None:
        flight = link.job_of(pid)
        if flight is None or pid is None:
            return
        async with self.ctx.session(link) as session:
            job = await transitions.mark_running(session, flight.job_id, prompt_id=pid)
            await session.commit()
            if job is None:
                current = await repo.get_job(session, flight.job_id)
                if current is not None and current.status == "canceled" and link.may_act():
                    # Canceled while its POST was under way: stop it now.
                    await link.client.interrupt(pid)
                return
        self.ctx.notifier.publish(job)

    def _progress(self, link: BackendLink, pid: str | None, progress: dict[str, Any]) -> None:
        flight = link.job_of(pid)
        if flight is None:
            return
        progress = {**progress, "nodes_done": len(flight.nodes_done), "current_node": flight.current_node}
        flight.progress = progress
        self.ctx.notifier.progress(flight.job_id, flight.user_id, progress)
        now = time.monotonic()
        # Live subscribers get every step; the row gets one write a second, enough for polling clients.
        if now - flight.last_progress_persist >= self.ctx.settings.progress_persist_seconds:
            flight.last_progress_persist = now
            self.ctx.spawn(self._persist_progress(flight.job_id, progress), f"progress {pid}")

    async def _persist_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        async with self.ctx.sessionmaker() as session:
            await repo.set_progress(session, job_id, progress)
            await session.commit()

    def _ended_on_backend(self, link: BackendLink, pid: str | None) -> None:
        """ComfyUI is done with the prompt: its slot goes to the next job right away."""
        if pid is not None and pid in link.slots:
            link.release(pid)
            self.ctx.wake()

    async def fail(self, link: BackendLink, pid: str | None, error: dict[str, Any]) -> None:
        flight = link.job_of(pid)
        if flight is None or pid is None:
            return
        await self.ctx.notifier.settle(flight.job_id)
        async with self.ctx.session(link) as session:
            job = await transitions.mark_failed(
                session, flight.job_id, error=error, prompt_id=pid, progress=flight.progress
            )
            await session.commit()
        link.forget(pid)
        self.ctx.wake()
        if job is not None:
            self.ctx.notifier.publish(job)

    async def _interrupted(self, link: BackendLink, pid: str | None) -> None:
        flight = link.job_of(pid)
        if flight is None or pid is None:
            return
        async with self.ctx.session(link) as session:
            job = await repo.get_job(session, flight.job_id)
            if job is not None and job.status == "canceled":
                # Our own cancel: nothing more to tell the backend.
                await repo.cleanup_done(session, job.id)
                await session.commit()
                link.forget(pid)
                self.ctx.wake()
                return
        await self.fail(link, pid, job_errors.interrupted())

    async def finish(self, link: BackendLink, pid: str) -> None:
        """The prompt ended: read its history entry and apply it."""
        if pid in link.collecting:
            return
        link.collecting.add(pid)
        try:
            entry = None
            # ComfyUI stores history before `executing: null`; a short retry covers proxies and races.
            for delay in (0.0, 0.05, 0.2, 0.5):
                await asyncio.sleep(delay)
                entry = await link.client.get_history(pid)
                if entry is not None:
                    break
            if entry is None:
                link.needs_reconcile = True
                self.ctx.wake()
                return
            await self.apply_history(link, pid, entry)
        except BackendUnavailable as exc:
            link.mark_unreachable(str(exc), self.ctx.settings.backend_retry_seconds)
        except Exception as exc:  # noqa: BLE001 - one job's collection must not hang it for good
            await self.fail_unexpected(link, pid, "collecting its outputs", exc)
        finally:
            link.collecting.discard(pid)

    async def apply_history(self, link: BackendLink, pid: str, entry: HistoryEntry) -> None:
        flight = link.job_of(pid)
        if flight is None:
            return
        self._ended_on_backend(link, pid)
        if entry.interrupted:
            await self._interrupted(link, pid)
            return
        if not entry.succeeded:
            err = entry.error()
            error = (
                job_errors.execution_error(
                    node_id=err.node_id,
                    node_type=err.node_type,
                    exception_type=err.exception_type,
                    message=err.exception_message,
                )
                if err
                else {
                    "type": "execution_error",
                    "message": f"ComfyUI ended the prompt with status {entry.status_str!r}.",
                }
            )
            await self.fail(link, pid, error)
            return
        await self._succeeded(link, pid, flight, entry)

    async def _succeeded(self, link: BackendLink, pid: str, flight: InFlight, entry: HistoryEntry) -> None:
        job: OutputSpec | None = flight.outputs
        if job is None:
            async with self.ctx.sessionmaker() as session:
                row = await repo.get_job(session, flight.job_id)
            if row is None or row.prompt_id != pid or row.status not in repo.ACTIVE:
                link.forget(pid)
                return
            job = OutputSpec.of(row)
        # Otherwise the row is not read first: the conditional transition below refuses a job
        # that was canceled (or moved on) meanwhile, and the copies are then deleted.
        # No database connection is held while files are copied.
        try:
            outputs = await collect(
                link.client, self.ctx.storage, job, entry, self.ctx.settings.max_job_output_bytes
            )
        except NotFound as exc:
            await self.fail(link, pid, job_errors.output_missing(str(exc)))
            return
        except OutputTooLarge as exc:
            await self.fail(link, pid, job_errors.output_too_large(exc.limit))
            return
        except BackendUnavailable:
            raise
        except ComfyError as exc:
            # A refusal that asking again does not change, e.g. /view answers 400 to a name with
            # `..` that a SaveImage prefix produced: ComfyUI listed an output it will not serve.
            await self.fail(link, pid, job_errors.output_missing(str(exc)))
            return
        await self.ctx.notifier.settle(job.id)
        async with self.ctx.session(link) as session:
            session.add_all(outputs)
            done = await transitions.mark_succeeded(
                session, job.id, prompt_id=pid, outputs=outputs, progress=flight.progress
            )
            if done is not None:
                await session.commit()
            else:
                # Canceled while the files were copied: the cancel wins, the copies go.
                await session.rollback()
                for out in outputs:
                    await self.ctx.storage.delete(out.storage_key)
        link.forget(pid)
        if done is not None:
            self.ctx.notifier.publish(done)

    # ---- reconciliation --------------------------------------------------------------------

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
        async with self.ctx.sessionmaker() as session:
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
                await self.fail_unexpected(link, job_pid, "reconciling it", exc, stop=True)
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
                await self._started(link, pid)
            return
        if pid in pending:
            return
        entry = await link.client.get_history(pid)
        if entry is not None:
            if pid not in link.collecting:
                await self.apply_history(link, pid, entry)
            return
        await self.requeue(link, pid, flight, count_attempt=True)

    async def requeue(self, link: BackendLink, pid: str, flight: InFlight, *, count_attempt: bool) -> None:
        """The backend does not have the prompt: the job goes back to the queue, or fails when
        it has been lost too often."""
        async with self.ctx.session(link) as session:
            job = await repo.get_job(session, flight.job_id)
            if job is None or job.prompt_id != pid:
                link.forget(pid)
                return
            if count_attempt and job.attempts >= self.ctx.settings.max_attempts:
                changed = await transitions.mark_failed(
                    session, job.id, error=job_errors.backend_lost(job.attempts), prompt_id=pid
                )
            else:
                changed = await transitions.unclaim(
                    session, job.id, prompt_id=pid, count_attempt=count_attempt
                )
            await session.commit()
        link.forget(pid)
        self.ctx.wake()
        if changed is not None:
            log.info(
                "job %s: backend %s does not have prompt %s; %s", flight.job_id, link.url, pid, changed.status
            )
