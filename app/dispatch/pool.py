"""The backend pool as the dispatcher keeps it: one BackendLink per row of the `backends` table.

Every replica re-reads the table on its poll (sync_backends), so a backend added, drained or
removed through any replica is followed, spared or let go by all of them. Adding a backend starts
its socket, health and capability tasks; removing it stops every one and closes its client, and
never loses a job it held.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.comfy.client import ComfyClient
from app.comfy.errors import ComfyError
from app.comfy.websocket import ComfyWebSocket
from app.config import Settings
from app.db import backends as backends_repo
from app.db import jobs as repo
from app.db.leases import Fence
from app.db.models import Backend
from app.db.state import get_or_create
from app.dispatch.backend import BackendLink, InFlight, OutputSpec, fenced_session, time_limit
from app.dispatch.capabilities import Capabilities, models_by_kind
from app.dispatch.health import BackendHealth
from app.dispatch.leases import LeaseKeeper
from app.dispatch.scheduler import FairScheduler
from app.dispatch.tasks import TaskSupervisor
from app.dispatch.tracker import Tracker
from app.domain import transitions
from app.domain.events.publish import Notifier
from app.domain.views import rfc3339
from app.metrics import Metrics

log = logging.getLogger("app.dispatch")


#: How long probe_health waits for a backend's answer.
PROBE_TIMEOUT = 3.0


def _never() -> bool:
    return False


class BackendPool:
    """The backends this process follows (with leases: those this replica holds), kept in step with
    the `backends` table. It is the lease keeper's `Owner` (app/dispatch/leases.py)."""

    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        notifier: Notifier,
        metrics: Metrics,
        scheduler: FairScheduler,
        tracker: Tracker,
        health: BackendHealth,
        tasks: TaskSupervisor,
        wake: Callable[[], None],
        leases: LeaseKeeper | None,
    ) -> None:
        """`wake`: asks the dispatcher for a round now (a backend joined, a job was requeued).
        `leases`: set with several dispatching replicas; None: this process follows every backend."""
        self._sessionmaker = sessionmaker
        self.settings = settings
        self.notifier = notifier
        self.metrics = metrics
        self.scheduler = scheduler
        self.tracker = tracker
        self.health = health
        self.tasks = tasks
        self.wake = wake
        self.leases = leases
        self.links: list[BackendLink] = []
        self.by_url: dict[str, BackendLink] = {}
        # Set once the dispatcher started: backends that join from then on are followed at once.
        self.started = False
        self._next_sync = 0.0
        # Counts drains/resumes applied in this process from admin calls.
        self._local_changes = 0
        # When probe_health last asked the backends (monotonic).
        self._probed_at = float("-inf")
        # The backends' URLs as the table had them at the last read.
        self.registered: frozenset[str] = frozenset()
        # The other replicas' backends: what each can run, as its owner recorded it (digest, parsed).
        self._peer_capabilities: dict[str, tuple[str, Capabilities]] = {}

    # ---- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.leases is not None:
            # Backends join `links` as their leases are taken (take_backend).
            self.started = True
            await self.leases.start(self)
        else:
            await self.load_inflight()
            self.started = True
            for link in self.links:
                self._start_link(link)

    async def close_sockets(self) -> None:
        for link in self.links:
            await link.ws.close()

    async def close_clients(self) -> None:
        for link in self.links:
            await link.client.aclose()

    async def load_inflight(self, backend: str | None = None) -> None:
        """Rebuild what is on each backend (or on one) from the rows: the database is the truth
        after a restart, and after a takeover."""
        async with self._sessionmaker() as session:
            jobs = await repo.in_flight(session, backend=backend)
        for job in jobs:
            link = self.by_url.get(job.backend or "")
            if link is not None and job.prompt_id:
                timeout = time_limit(job, self.settings.max_job_seconds)
                flight = InFlight(job.id, job.user_id, timeout=timeout, outputs=OutputSpec.of(job))
                if job.status == "running" and job.started_at is not None and flight.timeout is not None:
                    flight.deadline = job.started_at.timestamp() + flight.timeout
                link.track(job.prompt_id, flight)
                link.needs_reconcile = True

    async def return_prepared(self, links: list[BackendLink] | None = None) -> None:
        """Jobs claimed in reserve were never sent: back to the queue, no attempt counted, and
        their owners' turns given back to the scheduler."""
        items = [(link, item) for link in (self.links if links is None else links) for item in link.prepared]
        if not items:
            return
        for link in {link for link, _ in items}:
            async with fenced_session(self._sessionmaker, link) as session:
                for _, item in (pair for pair in items if pair[0] is link):
                    await transitions.unclaim(
                        session, item.job_id, prompt_id=item.prompt_id, count_attempt=False
                    )
                await session.commit()
        for link, item in items:
            link.drop_prepared(item.prompt_id)
            self.scheduler.give_back(item.user_id)

    # ---- the `backends` table --------------------------------------------------------------

    async def load(self) -> None:
        """Build a link per registered backend (without following them yet). With leases, links
        are built as leases are taken instead."""
        if self.leases is not None:
            return
        async with self._sessionmaker() as session:
            rows = await backends_repo.all_backends(session)
        for row in rows:
            await self._add_link(row.url, row.id, draining=row.state == "draining")

    async def _add_link(self, url: str, backend_id: str, *, draining: bool) -> BackendLink:
        # A stable client id per backend: ComfyUI sends a prompt's messages only to the socket of
        # the client id it was queued with, so after a restart we must reconnect with the same one.
        client_id = await get_or_create(
            self._sessionmaker, f"client_id:{url}", lambda: f"comfy-gateway-{uuid.uuid4()}"
        )
        settings = self.settings
        link = BackendLink(
            url=url,
            client_id=client_id,
            client=ComfyClient(
                url,
                timeout=settings.backend_timeout_seconds,
                # Which replica sent a prompt, for ComfyUI's access log (and the tests' emulator).
                headers=None if self.leases is None else {"X-Gateway-Replica": self.leases.name},
            ),
            ws=ComfyWebSocket(
                url,
                client_id,
                ping_interval=settings.ws_ping_seconds,
                ping_timeout=settings.ws_ping_seconds,
                max_size=settings.backend_ws_max_message_bytes,
            ),
            backend_id=backend_id,
            draining=draining,
        )
        self.links.append(link)
        self.by_url[url] = link
        return link

    def _start_link(self, link: BackendLink) -> None:
        link.health_failures = self.settings.health_failures
        self.metrics.backend_up.labels(link.url).set(0)
        link.tasks = [
            self.tasks.spawn(self.tracker.follow(link), f"follow {link.url}"),
            self.tasks.spawn(self.health.check_forever(link), f"health {link.url}"),
            self.tasks.spawn(self.health.refresh_forever(link), f"capabilities {link.url}"),
        ]

    async def _remove_link(self, link: BackendLink) -> None:
        """Stop following a backend that left the pool: every task of it ends, its client closes,
        and no job it held is lost (the API removes only drained, empty backends; a job that got
        there in a race with the removal goes back to the queue)."""
        self.links.remove(link)
        del self.by_url[link.url]
        await self.return_prepared([link])
        for pid, flight in list(link.inflight.items()):
            if pid in link.collecting:
                continue
            try:
                # It must not run there as well as where it goes next.
                await link.client.delete_from_queue([pid])
                await link.client.interrupt(pid)
            except ComfyError as exc:
                log.warning("removing %s: could not take prompt %s off it: %s", link.url, pid, exc)
            await self.tracker.requeue(link, pid, flight, count_attempt=False)
        await link.ws.close()
        for task in link.tasks:
            if not task.get_name().startswith("follow "):
                task.cancel()
        # Collections under way finish first: the client they use is closed next.
        pending = [t for t in link.tasks if not t.done()]
        deadline = time.monotonic() + self.settings.backend_timeout_seconds
        while (pending or link.collecting) and time.monotonic() < deadline:
            if pending:
                await asyncio.wait(pending, timeout=0.1)
                pending = [t for t in pending if not t.done()]
            else:
                await asyncio.sleep(0.05)
        await link.client.aclose()
        for gauge in (self.metrics.backend_up, self.metrics.backend_inflight):
            try:
                gauge.remove(link.url)
            except KeyError:
                pass
        log.info("backend %s removed from the pool", link.url)

    def sync_due(self, now: float) -> bool:
        """Whether the table is to be read again this round (once per poll, or after a change)."""
        if now < self._next_sync:
            return False
        self._next_sync = now + self.settings.dispatch_poll_seconds
        return True

    async def sync_backends(self) -> None:
        """Follow the `backends` table: start new backends, stop removed ones, apply drains.

        Every replica does this on its poll, so a change made through any replica reaches all.
        """
        await self._follow_table()
        await self._requeue_orphans()

    async def _follow_table(self) -> None:
        seen = self._local_changes
        async with self._sessionmaker() as session:
            rows = {row.url: row for row in await backends_repo.all_backends(session)}
        self.registered = frozenset(rows)
        if self.leases is not None:
            await self._follow_peer_capabilities(rows)
        for link in list(self.links):
            if link.url not in rows:
                await self._remove_link(link)
        for url, row in rows.items():
            known = self.by_url.get(url)
            if known is None and self.leases is not None:
                continue  # followed once its lease is taken (take_backend)
            if known is None:
                known = await self._add_link(url, row.id, draining=row.state == "draining")
                if self.started:
                    self._start_link(known)
                log.info("backend %s joined the pool", url)
            # A drain or resume applied here after this read began is newer than what was read:
            # applying the read would undo it for a moment and let a job onto a drained backend.
            if known.draining_stamp <= seen:
                known.draining = row.state == "draining"

    async def _follow_peer_capabilities(self, rows: dict[str, Backend]) -> None:
        """Load what the backends followed by other replicas can run, when their owners recorded a
        change (the digest in the row; the document itself is read only then)."""
        peers = self._peer_capabilities
        for url in [u for u in peers if u not in rows or u in self.by_url]:
            del peers[url]
        changed = [
            url
            for url, row in rows.items()
            if url not in self.by_url
            and row.capabilities_digest is not None
            and peers.get(url, ("", None))[0] != row.capabilities_digest
        ]
        if not changed:
            return
        async with self._sessionmaker() as session:
            recorded = await backends_repo.capabilities_of(session, changed)
        for url, (digest, body) in recorded.items():
            peers[url] = (digest, Capabilities.from_json(body))

    def capabilities_everywhere(self) -> list[Capabilities] | None:
        """What every registered backend can run (this replica's and the others'), or None while
        any of them is not known yet."""
        everywhere: list[Capabilities] = []
        for link in self.links:
            if link.capabilities is None:
                return None
            everywhere.append(link.capabilities)
        for url in self.registered:
            if url in self.by_url:
                continue
            known = self._peer_capabilities.get(url)
            if known is None:
                return None
            everywhere.append(known[1])
        return everywhere

    def peers_can_run(self, workflow: dict[str, Any]) -> bool:
        """Whether a backend another replica follows has all the workflow needs (that replica
        picks the job then; this one neither fails it nor says it waits)."""
        return any(
            url in self.registered and url not in self.by_url and not caps.missing(workflow)
            for url, (_, caps) in self._peer_capabilities.items()
        )

    async def _requeue_orphans(self) -> None:
        """Jobs handed to a backend that is no longer registered (removed in a race with a claim,
        or dropped from GATEWAY_COMFYUI_URLS) go back to the queue: nobody would follow them."""
        async with self._sessionmaker() as session:
            candidates = await backends_repo.orphaned_jobs(
                session, sorted(self.registered | {link.url for link in self.links})
            )
            if not candidates:
                return
            # Read the table again after the jobs: a backend registered in between is not an orphan.
            registered = {row.url for row in await backends_repo.all_backends(session)}
            changed = []
            for job in candidates:
                if job.backend not in registered and job.prompt_id:
                    log.warning(
                        "job %s was on %s, which is not registered: back to the queue", job.id, job.backend
                    )
                    changed.append(
                        await transitions.unclaim(
                            session, job.id, prompt_id=job.prompt_id, count_attempt=False
                        )
                    )
            await session.commit()
        # Subscribers hear of it from the event log (the unclaim logged a `status` event).
        for unclaimed in changed:
            if unclaimed is not None:
                self.notifier.publish(unclaimed)
        if changed:
            self.wake()

    def backends_changed(self, url: str | None = None, *, draining: bool | None = None) -> None:
        """Called after the admin API committed a change to the pool: apply it in this process now
        (a drain stops new work at once), and re-read the table on the next round."""
        link = self.by_url.get(url or "")
        if link is not None and draining is not None:
            self._local_changes += 1
            link.draining = draining
            link.draining_stamp = self._local_changes
        self._next_sync = 0.0
        self.wake()

    # ---- ownership (several dispatching replicas; app/dispatch/leases.py) --------------------

    async def take_backend(self, url: str, fence: Fence) -> bool:
        """This replica now holds the backend's lease: follow it, and reconcile the prompts the
        rows say are on it (from its /queue and /history), as after a restart. False when the
        backend is not registered (any more)."""
        assert self.leases is not None
        async with self._sessionmaker() as session:
            row = await backends_repo.by_url(session, url)
        if row is None:
            return False
        if url in self.by_url:
            # Still there from a lease lost a moment ago: that one goes first.
            await self._let_go(self.by_url[url], graceful=False)
        link = await self._add_link(url, row.id, draining=row.state == "draining")
        link.fence = fence
        keeper = self.leases
        link.may_act = lambda: keeper.valid(url, fence)
        await self.load_inflight(url)
        link.needs_reconcile = True
        self._start_link(link)
        self.metrics.backend_owned.labels(url).set(1)
        self.wake()
        return True

    async def drop_backend(self, url: str) -> None:
        """Give a backend up while its lease is still held (another replica joined): what was
        claimed in reserve goes back to the queue, and the rest is the next owner's to reconcile."""
        link = self.by_url.get(url)
        if link is not None:
            await self._let_go(link, graceful=True)

    def lease_lost(self, url: str) -> None:
        """The lease ran out: stop acting on the backend at once (`may_act` is already false)."""
        link = self.by_url.get(url)
        if link is not None:
            # Out of the pool now, so that no round uses it and a new lease builds a new link.
            self._detach(link)
            self.tasks.spawn(self._let_go(link, graceful=False), f"let go {url}")

    def backend_is_healthy(self, url: str) -> bool:
        link = self.by_url.get(url)
        return link is not None and link.healthy

    def _detach(self, link: BackendLink) -> None:
        link.may_act = _never
        if self.by_url.get(link.url) is link:
            self.links.remove(link)
            del self.by_url[link.url]

    async def _let_go(self, link: BackendLink, *, graceful: bool) -> None:
        self._detach(link)
        if graceful:
            # The lease is still held: reserves go back to the queue, collections under way finish.
            await self.return_prepared([link])
            deadline = time.monotonic() + self.settings.backend_timeout_seconds
            while link.collecting and time.monotonic() < deadline:  # noqa: ASYNC110 - a set, not an event
                await asyncio.sleep(0.05)
        if link.fence is not None:
            # From here on nothing of this link commits: the next owner decides for its jobs.
            link.fence = Fence(link.fence.owner, -1)
        link.prepared.clear()
        # Its socket first: ComfyUI's messages must go to the new owner's socket only.
        await link.ws.close()
        for task in link.tasks:
            task.cancel()
        await asyncio.gather(*link.tasks, return_exceptions=True)
        link.inflight.clear()
        link.slots.clear()
        link.submitting.clear()
        await link.client.aclose()
        for gauge in (
            self.metrics.backend_up,
            self.metrics.backend_inflight,
            self.metrics.backend_owned,
        ):
            try:
                gauge.remove(link.url)
            except KeyError:
                pass
        log.info("backend %s: no longer followed by this replica", link.url)

    def backend_health(self) -> dict[str, bool]:
        health = {link.url: link.healthy for link in self.links}
        if self.leases is not None:
            # The others' backends as their owners last reported them in the lease rows.
            for url, row in self.leases.snapshot.items():
                if url in self.registered:
                    health.setdefault(url, row.live and row.healthy)
        return health

    async def probe_health(self) -> None:
        """Make `backend_health` current on a replica that does not dispatch.

        Such a replica follows no backend (no socket, no health loop), so for readiness it asks
        them itself: the pool as the table has it now, then each backend's /system_stats, at most
        once per GATEWAY_HEALTH_CHECK_SECONDS however often readiness is probed. A dispatching replica's
        health loops keep it current already."""
        if self.started or time.monotonic() - self._probed_at < self.settings.health_check_seconds:
            return
        self._probed_at = time.monotonic()
        await self._follow_table()

        async def ask(link: BackendLink) -> None:
            try:
                # Readiness probes have short timeouts of their own: a backend that hangs is down.
                await asyncio.wait_for(self.health.check(link), PROBE_TIMEOUT)
            except TimeoutError:
                link.last_check_ok = False

        await asyncio.gather(*(ask(link) for link in self.links))

    def object_info(self) -> dict[str, Any] | None:
        for link in self.links:
            if link.object_info:
                return link.object_info
        return None

    def draining(self) -> list[str]:
        return [link.url for link in self.links if link.draining]

    def backend_live(self, url: str) -> dict[str, Any] | None:
        """What this dispatcher knows of a backend now, for the admin view (on a replica that does
        not dispatch: what its last probe_health found)."""
        link = self.by_url.get(url)
        if link is None or not (self.started or self._probed_at > float("-inf")):
            return None
        healthy = link.observe_health()
        caps = link.capabilities
        return {
            "health": {
                "status": "up" if healthy else "down",
                "since": rfc3339(link.health_since),
                "last_error": link.last_error,
                "connected": link.connected,
            },
            "backend_queue": link.queue_remaining,
            "capabilities": None
            if caps is None
            else {
                "node_classes": len(caps.nodes),
                "models": models_by_kind(caps),
                "refreshed_at": rfc3339(link.capabilities_at),
            },
        }
