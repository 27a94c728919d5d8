"""The dispatcher: a supervised loop that hands queued jobs to backends and cleans up cancels.

It holds its parts and runs their rounds; each part holds the others it needs, given here:
- the pool (app/dispatch/pool.py): the backends followed, kept in step with the `backends` table
  and, with several replicas, with this replica's leases;
- health (health.py): each backend's /system_stats checks and /object_info capabilities;
- the scheduler (scheduler.py): whose job runs next;
- a round's plan (placement.py): which backend each picked job goes to;
- the submitter (submitter.py): staging and `POST /prompt`;
- the tracker (tracker.py): socket messages become job transitions, collecting the outputs
  (collector.py) of a prompt that ended;
- the reconciler (reconciler.py): what a backend's /queue and /history say, when messages may
  have been missed;
- overdue prompts (overdue.py): fail-over of a backend down too long, jobs past their deadline;
- cancels (cancels.py): canceled and deleted jobs taken off their backends;
- the task supervisor (tasks.py): the background tasks they all start.

A job is claimed (a conditional UPDATE that sets its backend and a fresh prompt id) and the
claim is committed *before* `POST /prompt`, so the tracker knows the prompt id when the first
WebSocket message arrives, and a crash between the two is found by reconciliation.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import jobs as repo
from app.db.models import Job
from app.db.state import lock_claims
from app.dispatch import job_errors
from app.dispatch.backend import BackendLink, InFlight, OutputSpec, Prepared, time_limit
from app.dispatch.cancels import CancelCleanup
from app.dispatch.health import BackendHealth
from app.dispatch.leases import LeaseKeeper
from app.dispatch.overdue import Overdue
from app.dispatch.placement import PREPARE_AHEAD, RoundPlan
from app.dispatch.pool import BackendPool
from app.dispatch.reconciler import Reconciler
from app.dispatch.scheduler import FairScheduler
from app.dispatch.submitter import Submitter
from app.dispatch.tasks import TaskSupervisor
from app.dispatch.tracker import Tracker
from app.domain import transitions
from app.domain.events.publish import Notifier
from app.loops import Backoff, Loop
from app.metrics import Metrics
from app.storage.base import Storage

__all__ = ["PREPARE_AHEAD", "Dispatcher"]

# With several dispatching replicas, one replica at a time picks and claims (a transaction-scoped
# advisory lock): the per-user in-flight counts it reads stay true until its claims commit, so
# `max_running` holds exactly across replicas. Any constant: it only has to be the same everywhere.

log = logging.getLogger("app.dispatch")


class Dispatcher(Loop):
    # A round cut short is safe (what it claimed is reconciled at the next start); waiting for it
    # would hold a shutdown up on a slow backend.
    finish_round_at_stop = False
    # Set when a user other than the reserves' owners submits: reserves are then returned and
    # picked again, so the newcomer's job takes the next free slot.
    _reserve_stale = False

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
        self.notifier = notifier
        self.metrics = metrics
        # Several dispatching replicas (PostgreSQL): only the backends whose lease this replica
        # holds are in `links` (app/dispatch/leases.py). None: this process follows every backend.
        self.leases = leases
        self._sessionmaker = sessionmaker
        self._compose(sessionmaker, settings, storage, notifier, metrics, leases)
        # The waiting_reason last written per job, so that an unchanged reason is not rewritten.
        self._waiting: dict[str, str] = {}

    def _compose(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        storage: Storage,
        notifier: Notifier,
        metrics: Metrics,
        leases: LeaseKeeper | None,
    ) -> None:
        """Build the parts, each given the others it uses (a part is built after what it holds).
        A part that finds something changed asks for a round now through `wake`."""
        self.tasks = TaskSupervisor()
        self.scheduler = FairScheduler(settings)
        self.health_checks = BackendHealth(
            sessionmaker=sessionmaker, settings=settings, metrics=metrics, tasks=self.tasks, wake=self.wake
        )
        self.tracker = Tracker(
            sessionmaker=sessionmaker,
            settings=settings,
            storage=storage,
            notifier=notifier,
            metrics=metrics,
            tasks=self.tasks,
            health=self.health_checks,
            wake=self.wake,
        )
        self.reconciler = Reconciler(sessionmaker=sessionmaker, settings=settings, tracker=self.tracker)
        self.submitter = Submitter(settings=settings, storage=storage, tracker=self.tracker, tasks=self.tasks)
        # The pool is the `backends` table, re-read on every poll (see BackendPool.sync_backends).
        self.pool = BackendPool(
            sessionmaker=sessionmaker,
            settings=settings,
            notifier=notifier,
            metrics=metrics,
            scheduler=self.scheduler,
            tracker=self.tracker,
            health=self.health_checks,
            tasks=self.tasks,
            wake=self.wake,
            leases=leases,
        )
        self.overdue = Overdue(
            sessionmaker=sessionmaker,
            settings=settings,
            notifier=notifier,
            pool=self.pool,
            tracker=self.tracker,
        )
        self.cancels = CancelCleanup(
            sessionmaker=sessionmaker, settings=settings, pool=self.pool, wake=self.wake
        )

    @property
    def links(self) -> list[BackendLink]:
        return self.pool.links

    @property
    def _by_url(self) -> dict[str, BackendLink]:
        return self.pool.by_url

    # ---- life cycle ------------------------------------------------------------------------

    async def load(self) -> None:
        await self.pool.load()

    async def start(self) -> None:
        self.tasks.closing = False
        await self.pool.start()
        await super().start()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking work; what is in flight stays recorded and is reconciled on the next start.
        Bounded: the round and the backends' tasks get `timeout` seconds (5 by default). Leases are
        handed back at once, so that other replicas take the backends without waiting for expiry."""
        grace = self.stop_timeout if timeout is None else timeout
        if self.leases is not None:
            await self.leases.stop()
        self.tasks.closing = True
        await super().stop(grace)
        await self.pool.close_sockets()
        await self.tasks.wind_down(grace, cancel_now=("health ", "capabilities "))
        await self.pool.return_prepared()
        await self.pool.close_clients()
        if self.leases is not None:
            # After the reserves went back under the leases' fences: the others take over at once.
            await self.leases.release_all()

    def job_submitted(self, user_id: str) -> None:
        """Called after an API submit committed."""
        if any(item.user_id != user_id for link in self.links for item in link.prepared):
            self._reserve_stale = True
        self.wake()

    # ---- one round -------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Reconcile backends that need it, clean up cancels, dispatch into free slots.

        Returns how many jobs were handed to backends.
        """
        now = time.monotonic()
        if self.pool.sync_due(now):
            await self.pool.sync_backends()
        await self.reconciler.reconcile_due(self.links, now)
        await self.overdue.fail_over()
        sent = await self._dispatch()
        if self.cancels.due(now):
            await self.cancels.run()
        await self.overdue.enforce_deadlines()
        return sent

    async def _dispatch(self) -> int:
        """Send prepared prompts into free slots (no database on that path), then claim more.

        Each backend gets its free slots filled and `PREPARE_AHEAD` jobs claimed in reserve.
        Returns how many prompts were sent.
        """
        await self._return_unsendable_reserves()
        plan = RoundPlan(self.pool, self.settings.max_inflight_per_backend)
        sends = plan.fill_free_slots()
        sending = [self.submitter.send(self._by_url[url], items) for url, items in sends.items()]
        if plan.wanted():
            await self._claim(plan)
        sending += self._hand_out(plan, sends)
        waiting_for = [task for task in sending if task is not None]
        if waiting_for:
            await asyncio.gather(*waiting_for)
        return sum(len(items) for items in sends.values())

    async def _return_unsendable_reserves(self) -> None:
        if self._reserve_stale:
            self._reserve_stale = False
            await self.pool.return_prepared()
        drained = [link for link in self.links if link.draining and link.prepared]
        if drained:
            # Claimed in reserve before the drain and never sent: they go elsewhere.
            await self.pool.return_prepared(drained)

    async def _claim(self, plan: RoundPlan) -> None:
        """Pick jobs in the scheduler's order and claim each for the backend the plan routes it
        to; in the same transaction, fail the jobs that cannot run and note why others wait."""
        async with self._sessionmaker() as session:
            await lock_claims(session)
            for job in await self.scheduler.pick(session, plan.wanted(), accept=plan.placeable):
                await self._claim_one(session, plan, job)
            failed = await self._fail_unplaceable(session, plan)
            await self._note_waiting(session, plan.waiting)
            await session.commit()
        for item in (i for items in plan.claimed.values() for i in items):
            self._waiting.pop(item.job_id, None)
        for ended in failed:
            if ended is not None:
                self.notifier.publish(ended)

    async def _claim_one(self, session: AsyncSession, plan: RoundPlan, job: Job) -> None:
        try:
            url = plan.route(job)
            # Taken before the claim: its RETURNING row leaves the deferred columns out.
            item = Prepared(
                job.id,
                job.user_id,
                str(uuid.uuid4()),
                job.workflow,
                time_limit(job, self.settings.max_job_seconds),
                list(job.inputs or ()),
                OutputSpec.of(job),
            )
        except Exception:  # noqa: BLE001
            log.exception("job %s: unexpected error while preparing it", job.id)
            plan.broken.append(job.id)
            url = None
        if (
            url
            and await repo.claim(
                session, job.id, backend=url, prompt_id=item.prompt_id, fence=plan.fences[url]
            )
            is not None
        ):
            plan.claimed_for(url, item)
        else:
            self.scheduler.give_back(job.user_id)

    @staticmethod
    async def _fail_unplaceable(session: AsyncSession, plan: RoundPlan) -> list[Job | None]:
        return [
            await transitions.mark_failed(
                session, job_id, error=job_errors.unsupported(reasons), prompt_id=None
            )
            for job_id, reasons in plan.unrunnable.items()
        ] + [
            await transitions.mark_failed(session, job_id, error=job_errors.internal_error(), prompt_id=None)
            for job_id in dict.fromkeys(plan.broken)
        ]

    async def _note_waiting(self, session: AsyncSession, waiting: dict[str, str]) -> None:
        # Written only when it changes: a job waiting for hours costs one write. (Entries of
        # jobs canceled while waiting are not removed; the cap keeps that leak bounded.)
        if len(self._waiting) > 10_000:
            self._waiting.clear()
        for job_id, reason in waiting.items():
            if self._waiting.get(job_id) != reason:
                self._waiting[job_id] = reason
                await repo.set_waiting_reason(session, job_id, reason)

    def _hand_out(self, plan: RoundPlan, sends: dict[str, list[Prepared]]) -> list[asyncio.Task[None] | None]:
        """The round's claims go to their backends: sent at once into a free slot, or kept in
        reserve. Returns the sends started."""
        cap = plan.cap
        sending = []
        for url, items in plan.claimed.items():
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
                    sends.setdefault(url, []).append(item)
                    sending.append(self.submitter.send(owner, [item]))
                else:
                    owner.prepare(item, flight)
            self.metrics.backend_inflight.labels(url).set(len(owner.slots))
        return sending

    # ---- cancels ---------------------------------------------------------------------------

    async def job_canceled(self, job: Job) -> None:
        """Called after an API cancel committed: clean up on the backend now."""
        self.cancels.canceled(job)
        # Subscribers heard of it from the event log when the cancel committed; count it here.
        self.metrics.count_finished(job)
        self.wake()

    async def take_off(self, job: Job) -> None:
        """An admin deletes a canceled job now (see CancelCleanup.take_off)."""
        await self.cancels.take_off(job)

    # ---- the pool, for the API and the wiring ------------------------------------------------

    async def sync_backends(self) -> None:
        await self.pool.sync_backends()

    def users_changed(self) -> None:
        self.scheduler.users.forget_all()

    def backends_changed(self, url: str | None = None, *, draining: bool | None = None) -> None:
        self.pool.backends_changed(url, draining=draining)

    async def probe_health(self) -> None:
        await self.pool.probe_health()

    def backend_health(self) -> dict[str, bool]:
        return self.pool.backend_health()

    def draining(self) -> list[str]:
        return self.pool.draining()

    def backend_live(self, url: str) -> dict[str, Any] | None:
        return self.pool.backend_live(url)

    def object_info(self) -> dict[str, Any] | None:
        return self.pool.object_info()
