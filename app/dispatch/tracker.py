"""Following prompts on a backend: WebSocket messages become job transitions.

The WebSocket is fast but lossy (it drops, it replays nothing, ComfyUI may restart). A prompt
whose every message was heard on one connection, from `execution_start` to `execution_success`,
and that ran no node from the cache, has its outputs from its `executed` messages (ComfyUI builds
its /history entry's outputs from the same values); any other takes them from `/history`, and
whenever messages may have been missed the in-flight prompts are reconciled with `/queue` and
`/history`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.comfy.errors import BackendUnavailable, ComfyError, NotFound
from app.comfy.messages import (
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    Preview,
    Progress,
    Status,
    Unknown,
)
from app.comfy.models import HistoryEntry
from app.comfy.websocket import Connected, Disconnected
from app.config import Settings
from app.db import jobs as repo
from app.dispatch import job_errors
from app.dispatch.backend import BackendLink, InFlight, OutputSpec, fenced_session
from app.dispatch.collector import OutputTooLarge, collect
from app.dispatch.health import BackendHealth
from app.dispatch.tasks import TaskSupervisor
from app.domain import transitions
from app.domain.events.publish import Notifier
from app.metrics import Metrics
from app.storage.base import Storage

log = logging.getLogger("app.dispatch")


class Tracker:
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        storage: Storage,
        notifier: Notifier,
        metrics: Metrics,
        tasks: TaskSupervisor,
        health: BackendHealth,
        wake: Callable[[], None],
    ) -> None:
        """`wake`: asks the dispatcher for a round now (a slot came free, a backend needs
        reconciling)."""
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.storage = storage
        self.notifier = notifier
        self.metrics = metrics
        self.tasks = tasks
        self.health = health
        self.wake = wake

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
                self.tasks.spawn(
                    self.fail_unexpected(link, pid, f"handling {type(event).__name__}", exc, stop=True),
                    f"failed {pid}",
                )

    async def handle(self, link: BackendLink, msg: object) -> None:
        """One message from the backend's socket: the order of the cases matters (the guards
        match a prompt we follow; anything else is ignored)."""
        match msg:
            case Connected():
                self._connected(link)
            case Disconnected(reason=reason):
                self._disconnected(link, reason)
            case Status(queue_remaining=remaining):
                link.queue_remaining = remaining
            case ExecutionStart(prompt_id=pid) if (flight := link.job_of(pid)) is not None:
                self._execution_start(link, pid, flight)
            case Progress(prompt_id=pid, node=node, value=value, max=maximum):
                self._progress(link, pid, {"value": value, "max": maximum, "node": node})
            case ExecutionCached(prompt_id=pid, nodes=nodes) if (flight := link.job_of(pid)) is not None:
                flight.nodes_done.update(nodes)
                if nodes:
                    flight.heard_all = False  # see InFlight.executed
            case Executing(prompt_id=pid, node=node) if (
                node is not None and (flight := link.job_of(pid)) is not None
            ):
                self._node_started(flight, node)
            case Executed(prompt_id=pid, node=node, output=output) if (
                node is not None and (flight := link.job_of(pid)) is not None
            ):
                if output:
                    flight.executed[node] = output
            case Unknown(type=kind) if kind in ("executed", "<invalid>"):
                # An output we could not read may be one of ours.
                link.missed_messages()
            case Preview(prompt_id=pid) as preview if (flight := link.job_of(pid)) is not None:
                # Previews with metadata (event 4, which we ask for) say whose they are; others are dropped.
                self.notifier.preview(
                    flight.job_id, flight.user_id, preview.image_type, preview.image, preview.node_id
                )
            case ExecutionSuccess(prompt_id=pid):
                if (flight := link.job_of(pid)) is not None:
                    flight.succeeded = True
            case Executing(prompt_id=pid, node=None) if pid:
                # Sent after ComfyUI stored the history entry: the moment to collect.
                if link.job_of(pid) is not None:
                    self._ended_on_backend(link, pid)
                    self.tasks.spawn(self.finish(link, pid), f"finish {pid}")
            case ExecutionError(prompt_id=pid) as err if link.job_of(pid) is not None:
                self._execution_error(link, pid, err)
            case ExecutionInterrupted(prompt_id=pid) if link.job_of(pid) is not None:
                self._ended_on_backend(link, pid)
                self.tasks.spawn(
                    self._guarded(link, pid, "recording its interruption", self._interrupted(link, pid)),
                    f"interrupted {pid}",
                )
            case _:
                pass

    def _connected(self, link: BackendLink) -> None:
        link.connected = True
        link.mark_reachable()
        link.observe_health()
        link.needs_reconcile = True
        self.metrics.backend_up.labels(link.url).set(1)
        self.tasks.spawn(self.health.refresh_object_info(link), f"object_info {link.url}")
        self.wake()

    def _disconnected(self, link: BackendLink, reason: str) -> None:
        link.connected = False
        link.missed_messages()
        link.last_error = reason
        link.observe_health()
        if link.down_since is None:
            link.down_since = time.monotonic()
        # Is it gone, or only its socket? Ask now rather than at the next scheduled check.
        self.tasks.spawn(self.health.check(link), f"health {link.url}")
        self.metrics.backend_up.labels(link.url).set(0)
        log.warning("lost the socket of %s: %s", link.url, reason)

    def _execution_start(self, link: BackendLink, pid: str | None, flight: InFlight) -> None:
        flight.heard_all = True
        flight.executed.clear()
        flight.last_progress_persist = time.monotonic()
        if flight.timeout is not None:
            flight.deadline = time.time() + flight.timeout
        self.tasks.spawn(
            self._guarded(link, pid, "recording its start", self.started(link, pid)),
            f"running {pid}",
        )

    def _node_started(self, flight: InFlight, node: str) -> None:
        # A node starts: the one before it is done.
        if flight.current_node is not None:
            flight.nodes_done.add(flight.current_node)
        flight.current_node = node
        self.notifier.node_started(
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

    def _execution_error(self, link: BackendLink, pid: str | None, err: ExecutionError) -> None:
        self._ended_on_backend(link, pid)
        error = job_errors.execution_error(
            node_id=err.node_id,
            node_type=err.node_type,
            exception_type=err.exception_type,
            message=err.exception_message,
        )
        self.tasks.spawn(
            self._guarded(link, pid, "recording its failure", self.fail(link, pid, error)),
            f"failed {pid}",
        )

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
            self.wake()
            return
        if stop and link.may_act():
            try:
                await link.client.delete_from_queue([pid])
                await link.client.interrupt(pid)
            except Exception as err:  # noqa: BLE001 - best effort: the job's outcome is recorded
                log.warning("taking prompt %s off %s failed: %s", pid, link.url, err)

    async def started(self, link: BackendLink, pid: str | None) -> None:
        flight = link.job_of(pid)
        if flight is None or pid is None:
            return
        async with fenced_session(self.sessionmaker, link) as session:
            job = await transitions.mark_running(session, flight.job_id, prompt_id=pid)
            await session.commit()
            if job is None:
                current = await repo.get_job(session, flight.job_id)
                if current is not None and current.status == "canceled" and link.may_act():
                    # Canceled while its POST was under way: stop it now.
                    await link.client.interrupt(pid)
                return
        self.notifier.publish(job)

    def _progress(self, link: BackendLink, pid: str | None, progress: dict[str, Any]) -> None:
        flight = link.job_of(pid)
        if flight is None:
            return
        progress = {**progress, "nodes_done": len(flight.nodes_done), "current_node": flight.current_node}
        flight.progress = progress
        self.notifier.progress(flight.job_id, flight.user_id, progress)
        now = time.monotonic()
        # Live subscribers get every step; the row gets one write a second, enough for polling clients.
        if now - flight.last_progress_persist >= self.settings.progress_persist_seconds:
            flight.last_progress_persist = now
            self.tasks.spawn(self._persist_progress(flight.job_id, progress), f"progress {pid}")

    async def _persist_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        async with self.sessionmaker() as session:
            await repo.set_progress(session, job_id, progress)
            await session.commit()

    def _ended_on_backend(self, link: BackendLink, pid: str | None) -> None:
        """ComfyUI is done with the prompt: its slot goes to the next job right away."""
        if pid is not None and pid in link.slots:
            link.release(pid)
            self.wake()

    async def fail(self, link: BackendLink, pid: str | None, error: dict[str, Any]) -> None:
        flight = link.job_of(pid)
        if flight is None or pid is None:
            return
        await self.notifier.settle(flight.job_id)
        async with fenced_session(self.sessionmaker, link) as session:
            job = await transitions.mark_failed(
                session, flight.job_id, error=error, prompt_id=pid, progress=flight.progress
            )
            await session.commit()
        link.forget(pid)
        self.wake()
        if job is not None:
            self.notifier.publish(job)

    async def _interrupted(self, link: BackendLink, pid: str | None) -> None:
        flight = link.job_of(pid)
        if flight is None or pid is None:
            return
        async with fenced_session(self.sessionmaker, link) as session:
            job = await repo.get_job(session, flight.job_id)
            if job is not None and job.status == "canceled":
                # Our own cancel: nothing more to tell the backend.
                await repo.cleanup_done(session, job.id)
                await session.commit()
                link.forget(pid)
                self.wake()
                return
        await self.fail(link, pid, job_errors.interrupted())

    async def finish(self, link: BackendLink, pid: str) -> None:
        """The prompt ended: apply its outcome, from its messages if all were heard and it
        succeeded, else from its history entry."""
        if pid in link.collecting:
            return
        link.collecting.add(pid)
        try:
            flight = link.job_of(pid)
            if flight is not None and flight.succeeded and flight.heard_all:
                await self.apply_history(link, pid, HistoryEntry.succeeded_with(pid, flight.executed))
                return
            entry = None
            # ComfyUI stores history before `executing: null`; a short retry covers proxies and races.
            for delay in (0.0, 0.05, 0.2, 0.5):
                await asyncio.sleep(delay)
                entry = await link.client.get_history(pid)
                if entry is not None:
                    break
            if entry is None:
                link.needs_reconcile = True
                self.wake()
                return
            await self.apply_history(link, pid, entry)
        except BackendUnavailable as exc:
            link.mark_unreachable(str(exc), self.settings.backend_retry_seconds)
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
            async with self.sessionmaker() as session:
                row = await repo.get_job(session, flight.job_id)
            if row is None or row.prompt_id != pid or row.status not in repo.ACTIVE:
                link.forget(pid)
                return
            job = OutputSpec.of(row)
        # Otherwise the row is not read first: the conditional transition below refuses a job
        # that was canceled (or moved on) meanwhile, and the copies are then deleted.
        # No database connection is held while files are copied.
        try:
            outputs = await collect(link.client, self.storage, job, entry, self.settings.max_job_output_bytes)
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
        await self.notifier.settle(job.id)
        async with fenced_session(self.sessionmaker, link) as session:
            done = await transitions.mark_succeeded(
                session, job.id, prompt_id=pid, outputs=outputs, progress=flight.progress
            )
            if done is not None:
                await session.commit()
            else:
                # Canceled while the files were copied: the cancel wins, the copies go.
                await session.rollback()
                for out in outputs:
                    await self.storage.delete(out.storage_key)
        link.forget(pid)
        if done is not None:
            self.notifier.publish(done)

    async def requeue(self, link: BackendLink, pid: str, flight: InFlight, *, count_attempt: bool) -> None:
        """The backend does not have the prompt: the job goes back to the queue, or fails when
        it has been lost too often."""
        async with fenced_session(self.sessionmaker, link) as session:
            job = await repo.get_job(session, flight.job_id)
            if job is None or job.prompt_id != pid:
                link.forget(pid)
                return
            if count_attempt and job.attempts >= self.settings.max_attempts:
                changed = await transitions.mark_failed(
                    session, job.id, error=job_errors.backend_lost(job.attempts), prompt_id=pid
                )
            else:
                changed = await transitions.unclaim(
                    session, job.id, prompt_id=pid, count_attempt=count_attempt
                )
            await session.commit()
        link.forget(pid)
        self.wake()
        if changed is not None:
            log.info(
                "job %s: backend %s does not have prompt %s; %s", flight.job_id, link.url, pid, changed.status
            )
