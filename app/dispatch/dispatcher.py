"""The dispatcher: a supervised loop that hands queued jobs to backends and cleans up cancels.

A job is claimed (a conditional UPDATE that sets its backend and a fresh prompt id) and the
claim is committed *before* `POST /prompt`, so the tracker knows the prompt id when the first
WebSocket message arrives, and a crash between the two is found by reconciliation.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.comfy.errors import BackendUnavailable, ComfyError, PromptRejected
from app.config import Settings
from app.db import jobs as repo
from app.db.models import Job
from app.db.state import lock_claims
from app.dispatch import job_errors, staging
from app.dispatch.backend import BackendLink, InFlight, OutputSpec, Prepared
from app.dispatch.capabilities import checkpoint_of
from app.dispatch.leases import LeaseKeeper
from app.dispatch.pool import BackendPool
from app.dispatch.scheduler import FairScheduler
from app.dispatch.tracker import DispatchContext, Tracker
from app.domain import transitions
from app.domain.events.publish import Notifier
from app.loops import Backoff, Loop
from app.metrics import Metrics
from app.storage.base import Storage

# Jobs claimed in reserve per backend beyond its in-flight slots.
PREPARE_AHEAD = 1

# With several dispatching replicas, one replica at a time picks and claims (a transaction-scoped
# advisory lock): the per-user in-flight counts it reads stay true until its claims commit, so
# `max_running` holds exactly across replicas. Any constant: it only has to be the same everywhere.

log = logging.getLogger("app.dispatch")


class Dispatcher(Loop, BackendPool):
    # A round cut short is safe (what it claimed is reconciled at the next start); waiting for it
    # would hold a shutdown up on a slow backend.
    finish_round_at_stop = False

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        storage: Storage,
        notifier: Notifier,
        metrics: Metrics,
        leases: LeaseKeeper | None = None,
    ) -> None:
        poll = settings.dispatch_poll_seconds
        super().__init__(
            "dispatcher",
            interval=poll,
            backoff=Backoff(initial=min(poll, 1.0), cap=max(poll, 10.0)),
            round_seconds=metrics.dispatch_round_seconds.observe,
            logger=log,
        )
        self.settings = settings
        # Several dispatching replicas (PostgreSQL): only the backends whose lease this replica
        # holds are in `links` (app/dispatch/leases.py). None: this process follows every backend.
        self.leases = leases
        self._sessionmaker = sessionmaker
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        # The pool is the `backends` table, re-read on every poll (see sync_backends).
        self.links: list[BackendLink] = []
        self._by_url: dict[str, BackendLink] = {}
        self._next_sync = 0.0
        self._peer_capabilities = {}
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
        self.scheduler = FairScheduler(settings)
        # Set when a user other than the reserves' owners submits: reserves are then returned and
        # picked again, so the newcomer's job takes the next free slot.
        self._reserve_stale = False
        # The waiting_reason last written per job, so that an unchanged reason is not rewritten.
        self._waiting: dict[str, str] = {}
        # Canceled jobs are looked for when this process canceled one, and once per poll for
        # cancels made through other replicas: not on every round (a query per job otherwise).
        self._cancel_hint = True
        self._next_cancel_scan = 0.0

    # ---- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.leases is not None:
            # Backends join `links` as their leases are taken (take_backend).
            self._started = True
            await self.leases.start(self)
        else:
            await self._load_inflight()
            self._started = True
            for link in self.links:
                self._start_link(link)
        await super().start()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking work; what is in flight stays recorded and is reconciled on the next start.
        Bounded: the round and the backends' tasks get `timeout` seconds (5 by default). Leases are
        handed back at once, so that other replicas take the backends without waiting for expiry."""
        grace = self.stop_timeout if timeout is None else timeout
        if self.leases is not None:
            await self.leases.stop()
        await super().stop(grace)
        for link in self.links:
            await link.ws.close()
        for task in self._tasks:
            if task.get_name().startswith(("health ", "capabilities ")):
                task.cancel()
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._return_prepared()
        for link in self.links:
            await link.client.aclose()
        if self.leases is not None:
            # After the reserves went back under the leases' fences: the others take over at once.
            await self.leases.release_all()

    async def _return_prepared(self, links: list[BackendLink] | None = None) -> None:
        """Jobs claimed in reserve were never sent: back to the queue, no attempt counted, and
        their owners' turns given back to the scheduler."""
        items = [(link, item) for link in (self.links if links is None else links) for item in link.prepared]
        if not items:
            return
        for link in {link for link, _ in items}:
            async with self.ctx.session(link) as session:
                for _, item in (pair for pair in items if pair[0] is link):
                    await transitions.unclaim(
                        session, item.job_id, prompt_id=item.prompt_id, count_attempt=False
                    )
                await session.commit()
        for link, item in items:
            link.drop_prepared(item.prompt_id)
            self.scheduler.give_back(item.user_id)

    def job_submitted(self, user_id: str) -> None:
        """Called after an API submit committed."""
        if any(item.user_id != user_id for link in self.links for item in link.prepared):
            self._reserve_stale = True
        self.wake()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def _load_inflight(self, backend: str | None = None) -> None:
        """Rebuild what is on each backend (or on one) from the rows: the database is the truth
        after a restart, and after a takeover."""
        async with self._sessionmaker() as session:
            jobs = await repo.in_flight(session, backend=backend)
        for job in jobs:
            link = self._by_url.get(job.backend or "")
            if link is not None and job.prompt_id:
                flight = InFlight(job.id, job.user_id, timeout=self._timeout(job), outputs=OutputSpec.of(job))
                if job.status == "running" and job.started_at is not None and flight.timeout is not None:
                    flight.deadline = job.started_at.timestamp() + flight.timeout
                link.track(job.prompt_id, flight)
                link.needs_reconcile = True

    # ---- one round -------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Reconcile backends that need it, clean up cancels, dispatch into free slots.

        Returns how many jobs were handed to backends.
        """
        now = time.monotonic()
        if now >= self._next_sync:
            self._next_sync = now + self.settings.dispatch_poll_seconds
            await self.sync_backends()
        for link in self.links:
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
                    await self.tracker.reconcile(link)
                except BackendUnavailable as exc:
                    link.mark_unreachable(str(exc), self.settings.backend_retry_seconds)
                except Exception:  # noqa: BLE001 - one backend's trouble must not stop the others' round
                    # It stays to be reconciled (and gets no new work) until a round gets through.
                    log.exception("reconciling %s failed", link.url)
        await self._fail_over()
        sent = await self._dispatch()
        if self._cancel_hint or now >= self._next_cancel_scan:
            self._cancel_hint = False
            self._next_cancel_scan = now + self.settings.dispatch_poll_seconds
            await self._cleanup_cancels()
        await self._enforce_deadlines()
        return sent

    async def _dispatch(self) -> int:
        """Send prepared prompts into free slots (no database on that path), then claim more.

        Each backend gets its free slots filled and `PREPARE_AHEAD` jobs claimed in reserve.
        Returns how many prompts were sent.
        """
        cap = self.settings.max_inflight_per_backend
        if self._reserve_stale:
            self._reserve_stale = False
            await self._return_prepared()
        drained = [link for link in self.links if link.draining and link.prepared]
        if drained:
            # Claimed in reserve before the drain and never sent: they go elsewhere.
            await self._return_prepared(drained)
        ready = [
            link
            for link in self.links
            if link.healthy
            and link.may_act()
            and not link.needs_reconcile
            and link.capabilities is not None
            and not link.draining
        ]
        sends: dict[str, list[Prepared]] = defaultdict(list)
        for link in ready:
            while link.prepared and link.free_slots(cap):
                item = link.prepared.popleft()
                link.slots.add(item.prompt_id)
                sends[link.url].append(item)
        sending = [self._send(self._by_url[url], items) for url, items in sends.items()]

        want = {link.url: link.free_slots(cap) + max(0, PREPARE_AHEAD - len(link.prepared)) for link in ready}
        fences = {link.url: link.fence for link in ready}
        claimed: dict[str, list[Prepared]] = defaultdict(list)
        unrunnable: dict[str, list[str]] = {}
        waiting: dict[str, str] = {}

        gaps: dict[tuple[str, str], list[str] | None] = {}

        def missing(link: BackendLink, job: Job) -> list[str] | None:
            # What a backend lacks for a job, worked out once per round.
            key = (link.url, job.id)
            if key not in gaps:
                gaps[key] = link.missing(job.workflow)
            return gaps[key]

        # Jobs that raised while being looked at or claimed: they fail alone (internal_error).
        broken: list[str] = []

        def placeable(job: Job) -> bool:
            try:
                return _placeable(job)
            except Exception:  # noqa: BLE001
                log.exception("job %s: unexpected error while placing it", job.id)
                broken.append(job.id)
                return False

        def _placeable(job: Job) -> bool:
            if any(missing(link, job) == [] for link in ready):
                return True
            if self.leases is not None and self.peers_can_run(job.workflow):
                return False  # another replica's backend can: that replica picks it
            self._note_unrunnable(job, unrunnable, missing)
            if job.id not in unrunnable:
                lacking = min((missing(link, job) or [] for link in ready), key=len, default=[])
                waiting[job.id] = (
                    "No healthy backend can run it now; waiting for one with " + "; ".join(lacking[:5]) + "."
                )
            return False

        if sum(want.values()):
            async with self._sessionmaker() as session:
                if self.leases is not None:
                    await lock_claims(session)
                for job in await self.scheduler.pick(session, sum(want.values()), accept=placeable):
                    try:
                        url = self._route(job, ready, want, missing)
                        # Taken before the claim: its RETURNING row leaves the deferred columns out.
                        item = Prepared(
                            job.id,
                            job.user_id,
                            str(uuid.uuid4()),
                            job.workflow,
                            self._timeout(job),
                            list(job.inputs or ()),
                            OutputSpec.of(job),
                        )
                    except Exception:  # noqa: BLE001
                        log.exception("job %s: unexpected error while preparing it", job.id)
                        broken.append(job.id)
                        url = None
                    if (
                        url
                        and await repo.claim(
                            session,
                            job.id,
                            backend=url,
                            prompt_id=item.prompt_id,
                            fence=fences[url],
                        )
                        is not None
                    ):
                        want[url] -= 1
                        claimed[url].append(item)
                    else:
                        self.scheduler.give_back(job.user_id)
                failed = [
                    await transitions.mark_failed(
                        session, job_id, error=job_errors.unsupported(reasons), prompt_id=None
                    )
                    for job_id, reasons in unrunnable.items()
                ] + [
                    await transitions.mark_failed(
                        session, job_id, error=job_errors.internal_error(), prompt_id=None
                    )
                    for job_id in dict.fromkeys(broken)
                ]
                # Written only when it changes: a job waiting for hours costs one write. (Entries of
                # jobs canceled while waiting are not removed; the cap keeps that leak bounded.)
                if len(self._waiting) > 10_000:
                    self._waiting.clear()
                for job_id, reason in waiting.items():
                    if self._waiting.get(job_id) != reason:
                        self._waiting[job_id] = reason
                        await repo.set_waiting_reason(session, job_id, reason)
                await session.commit()
            for item in (i for items in claimed.values() for i in items):
                self._waiting.pop(item.job_id, None)
            for ended in failed:
                if ended is not None:
                    self.ctx.notifier.publish(ended)
        for url, items in claimed.items():
            owner = self._by_url.get(url)
            if owner is None:
                # Its lease was lost during the round: the claims are the next owner's to reconcile.
                for item in items:
                    self.scheduler.give_back(item.user_id)
                continue
            for item in items:
                flight = InFlight(item.job_id, item.user_id, timeout=item.timeout, outputs=item.outputs)
                if owner.free_slots(cap) and not owner.draining:
                    owner.track(item.prompt_id, flight)
                    owner.submitting.add(item.prompt_id)
                    sends[url].append(item)
                    sending.append(self._send(owner, [item]))
                else:
                    owner.prepare(item, flight)
            self.ctx.metrics.backend_inflight.labels(url).set(len(owner.slots))
        waiting_for = [task for task in sending if task is not None]
        if waiting_for:
            await asyncio.gather(*waiting_for)
        return sum(len(items) for items in sends.values())

    def _send(self, link: BackendLink, items: list[Prepared]) -> asyncio.Task[None] | None:
        """Submit a backend's prompts. Those with input images to upload first run on their own,
        supervised, so the round (and every other backend) never waits for an upload; the rest
        are awaited by the round, which keeps their order."""
        if any(item.inputs for item in items):
            for item in items:
                link.submitting.add(item.prompt_id)
            self._spawn(self._submit_all(link, items), f"stage and submit {items[0].job_id}")
            return None
        return asyncio.create_task(self._submit_all(link, items))

    async def _fail_over(self) -> None:
        """Jobs on a backend that has been unreachable past the grace period go to the others."""
        now = time.monotonic()
        for link in self.links:
            if (
                link.down_since is None
                or now - link.down_since < self.settings.failover_grace_seconds
                or not link.may_act()
            ):
                continue
            await self._return_prepared([link])
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

    def _timeout(self, job: Job) -> float:
        limit = self.settings.max_job_seconds
        return min(job.timeout_seconds, limit) if job.timeout_seconds else limit

    async def _enforce_deadlines(self) -> None:
        """Interrupt jobs that ran past their time limit; fail them with type `timeout`."""
        now = time.time()
        for link in self.links:
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
                async with self.ctx.session(link) as session:
                    job = await transitions.mark_failed(
                        session,
                        flight.job_id,
                        error=job_errors.timeout(flight.timeout or 0),
                        prompt_id=pid,
                        progress=flight.progress,
                    )
                    await session.commit()
                if job is not None:
                    self.ctx.notifier.publish(job)
                flight.interrupt_due = now + self.settings.interrupt_grace_seconds
                try:
                    await link.client.interrupt(pid)
                except ComfyError as exc:
                    log.error("interrupting prompt %s on %s failed: %s", pid, link.url, exc)
                    link.mark_unreachable(
                        f"interrupt failed: {exc}", self.settings.backend_retry_seconds * 10
                    )
                    link.forget(pid)

    @staticmethod
    def _route(
        job: Job, ready: list[BackendLink], want: dict[str, int], missing: Callable[..., list[str] | None]
    ) -> str | None:
        """Among capable backends with room: the least loaded, then one with the checkpoint warm."""
        checkpoint = checkpoint_of(job.workflow)
        capable = [link for link in ready if want[link.url] > 0 and missing(link, job) == []]
        if not capable:
            return None
        best = max(
            capable,
            key=lambda link: (
                want[link.url],
                -(link.queue_remaining or 0),
                checkpoint is not None and link.last_checkpoint == checkpoint,
            ),
        )
        return best.url

    def _note_unrunnable(
        self, job: Job, unrunnable: dict[str, list[str]], missing: Callable[..., list[str] | None]
    ) -> None:
        """A job that every registered backend lacks something for fails now (the other replicas'
        backends as their owners recorded them); one that waits for a backend whose capabilities
        are not known yet stays queued."""
        everywhere = self.capabilities_everywhere()
        if not everywhere:
            return
        own = [missing(link, job) or [] for link in self.links]
        reasons = own + [caps.missing(job.workflow) for caps in everywhere[len(self.links) :]]
        if all(reasons):
            unrunnable[job.id] = min(reasons, key=len)

    async def _submit_all(self, link: BackendLink, items: list[Prepared]) -> None:
        # One backend's prompts in order: ComfyUI numbers them as they arrive.
        for item in items:
            await self._submit(link, item)

    async def _submit(self, link: BackendLink, item: Prepared) -> None:
        try:
            await self._submit_one(link, item)
        except Exception as exc:  # noqa: BLE001 - whatever one job does, the slot it holds comes back
            # The POST may have reached the backend: the prompt is taken off it too.
            await self.tracker.fail_unexpected(
                link, item.prompt_id, "staging or submitting it", exc, stop=True
            )
            link.release(item.prompt_id)
            link.submitting.discard(item.prompt_id)

    async def _submit_one(self, link: BackendLink, item: Prepared) -> None:
        prompt_id = item.prompt_id
        flight = link.inflight.get(prompt_id)
        if flight is None:  # canceled while it waited
            link.release(prompt_id)
            link.submitting.discard(prompt_id)
            return
        if not link.may_act():
            # The lease was lost before it was sent: its claim is the new owner's to reconcile.
            link.release(prompt_id)
            link.submitting.discard(prompt_id)
            return
        link.last_checkpoint = checkpoint_of(item.workflow) or link.last_checkpoint
        workflow = item.workflow
        try:
            if item.inputs:
                workflow = await staging.stage(
                    link.client, self.ctx.storage, item.job_id, item.workflow, item.inputs
                )
                if prompt_id not in link.inflight:  # canceled while its inputs were uploaded
                    link.release(prompt_id)
                    link.submitting.discard(prompt_id)
                    return
        except staging.InputMissing as exc:
            link.submitting.discard(prompt_id)
            await self.tracker.fail(link, prompt_id, job_errors.input_missing(exc.param))
            return
        except BackendUnavailable as exc:
            # No prompt was queued: back to the queue, and this was no attempt.
            link.submitting.discard(prompt_id)
            link.mark_unreachable(str(exc), self.settings.backend_retry_seconds)
            await self.tracker.requeue(link, prompt_id, flight, count_attempt=False)
            return
        except ComfyError as exc:
            # The backend refused an upload (e.g. its own size limit): the job cannot run there.
            link.submitting.discard(prompt_id)
            await self.tracker.fail(link, prompt_id, job_errors.staging_failed(str(exc)))
            return
        if not link.may_act():
            link.release(prompt_id)
            link.submitting.discard(prompt_id)
            return
        try:
            await link.client.queue_prompt(workflow, prompt_id=prompt_id, client_id=link.client_id)
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
        if prompt_id not in link.inflight and link.may_act():
            # Given up while its POST was under way (e.g. deleted by an admin): nothing follows
            # it, so it must not run. (A prompt that already ended is not harmed by this.)
            try:
                await link.client.delete_from_queue([prompt_id])
                await link.client.interrupt(prompt_id)
            except ComfyError as exc:
                log.warning("taking prompt %s off %s failed: %s", prompt_id, link.url, exc)

    # ---- cancels ---------------------------------------------------------------------------

    async def _cleanup_cancels(self) -> None:
        """Take canceled jobs off their backends: delete from its queue, and interrupt it by prompt id.

        All of a backend's deletes go before any of its interrupts: an interrupt lets the backend
        start its next pending prompt, which must not be another canceled one still queued there.
        With leases, only this replica's backends: the others' owners clean theirs."""
        owned = None if self.leases is None else [link.url for link in self.links]
        if self.leases is not None:
            await self._take_off_deleted()
        async with self._sessionmaker() as session:
            jobs = await repo.canceled_needing_cleanup(session, backends=owned)
        groups: dict[str, tuple[BackendLink, list[Job]]] = {}
        for job in jobs:
            link = self._by_url.get(job.backend or "")
            if link is None and self.leases is not None and job.backend in self._registered:
                continue  # another replica's backend: its owner takes the prompt off
            if link is None or link.drop_prepared(job.prompt_id or ""):
                await self._cleanup_done(job)
            elif link.healthy and job.prompt_id not in link.submitting and link.may_act():
                groups.setdefault(link.url, (link, []))[1].append(job)
        for link, group in groups.values():
            pids = [job.prompt_id or "" for job in group]
            try:
                await link.client.delete_from_queue(pids)
                for pid in pids:
                    await link.client.interrupt(pid)
            except BackendUnavailable as exc:
                link.mark_unreachable(str(exc), self.settings.backend_retry_seconds)
                continue
            except Exception:  # noqa: BLE001 - not transient: trying every round would not help
                log.exception("taking canceled prompts %s off %s failed", pids, link.url)
            for job in group:
                link.forget(job.prompt_id or "")
                await self._cleanup_done(job)

    async def _take_off_deleted(self) -> None:
        """Jobs an admin deleted through another replica while they were on this replica's
        backends: that replica does not follow them, and with the row gone no cancel is left to
        find, so their prompts are taken off here and their slots freed."""
        followed: dict[str, tuple[BackendLink, str]] = {}
        for link in self.links:
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
            # All deletes before any interrupt, as for cancels (see _cleanup_cancels).
            try:
                await link.client.delete_from_queue(pids)
                for pid in pids:
                    await link.client.interrupt(pid)
            except BackendUnavailable as exc:
                link.mark_unreachable(str(exc), self.settings.backend_retry_seconds)
                continue
            except ComfyError as exc:
                log.warning("taking the prompts of deleted jobs %s off %s failed: %s", pids, link.url, exc)
            log.info("jobs deleted through another replica: prompts %s taken off %s", pids, link.url)
            for pid in pids:
                link.forget(pid)
            self.wake()

    async def _cleanup_done(self, job: Job) -> None:
        async with self._sessionmaker() as session:
            await repo.cleanup_done(session, job.id)
            await session.commit()

    async def job_canceled(self, job: Job) -> None:
        """Called after an API cancel committed: clean up on the backend now."""
        for link in self.links:
            for item in list(link.prepared):
                if item.job_id == job.id:
                    link.drop_prepared(item.prompt_id)
        # Subscribers heard of it from the event log when the cancel committed; count it here.
        self.ctx.metrics.count_finished(job)
        self._cancel_hint = True
        self.wake()

    async def take_off(self, job: Job) -> None:
        """An admin deletes a canceled job now: its prompt leaves its backend here, because once the
        row is gone the cleanup of cancels has nothing to find. Best effort: a backend that does not
        answer may still run it, unfollowed."""
        link = self._by_url.get(job.backend or "")
        if link is None or not job.prompt_id or link.drop_prepared(job.prompt_id) or not link.may_act():
            return
        try:
            await link.client.delete_from_queue([job.prompt_id])
            await link.client.interrupt(job.prompt_id)
        except ComfyError as exc:
            log.warning("job %s: taking prompt %s off %s failed: %s", job.id, job.prompt_id, link.url, exc)
        link.forget(job.prompt_id)
        self.wake()

    # ---- views for the API -----------------------------------------------------------------

    def object_info(self) -> dict[str, Any] | None:
        for link in self.links:
            if link.object_info:
                return link.object_info
        return None
