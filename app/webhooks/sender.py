"""The webhook sender: a supervised loop (app/loops.py), owned by the app's lifespan, that sends due outbox rows.

Rows are the truth: a delivery is leased (app/db/webhooks.py) before it is sent and its attempt
recorded after, so a crash loses nothing (the lease expires and another sender, or this one after
a restart, takes it) and two replicas never send the same attempt at once. Nothing here touches
the job: a receiver that fails, hangs or lies never affects the job or the API.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook

from app.config import Settings
from app.db import jobs as jobs_repo
from app.db import webhooks as repo
from app.db.models import WebhookDelivery
from app.db.types import utcnow
from app.domain.views import job_view, rfc3339
from app.domain.webhook_secrets import SecretBox, signing_secrets
from app.loops import Backoff, Loop
from app.metrics import Metrics
from app.net.ssrf import OutboundGuard, UnsafeRequest
from app.storage.signing import UrlSigner
from app.webhooks.retry import RetrySchedule

log = logging.getLogger("app.webhooks")

# Deliveries leased per round, per sender (GATEWAY_WEBHOOK_MAX_INFLIGHT bounds those in flight).
BATCH = 32
#: How long a stopping sender tries to give back its leases.
RELEASE_TIMEOUT = 5.0
#: An attempt ends this long before its lease does (at most; less when the lease is barely longer
#: than GATEWAY_WEBHOOK_TIMEOUT_SECONDS), so that it is recorded while the lease still holds and no
#: other sender can have taken the delivery meanwhile and be sending it too.
LEASE_MARGIN = 2.0

# What an attempt's `error` says, shown to the job's owner: a fixed vocabulary. The exception's own
# words (refused vs. reset vs. TLS text, what a name resolved to) would map ports and hosts the
# gateway reaches; they go to the server's log only.
TIMEOUT = "timeout"
CONNECTION_FAILED = "connection_failed"
HTTP_STATUS = "http_status"
REDIRECT = "redirect_not_followed"
GONE = "gone"
REFUSED = "refused_by_guard"
SEND_FAILED = "send_failed"


@dataclass(slots=True)
class Outcome:
    status_code: int | None = None
    error: str | None = None
    # For the log: what went wrong, in the words of the exception (never shown to users).
    detail: str | None = None
    succeeded: bool = False
    # The receiver asked for no more deliveries (410 Gone).
    stop: bool = False
    retry_after: float | None = None
    # The guard refused the address: nothing was sent.
    refused: bool = False


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as delta-seconds or an HTTP date (RFC 9110 10.2.3); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def sign(secrets: list[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """The `webhook-signature` header: one `v1,<base64>` entry per secret that signs now."""
    return " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in secrets)


class WebhookSender(Loop):
    def __init__(
        self,
        *,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        signer: UrlSigner,
        box: SecretBox,
        guard: OutboundGuard,
        metrics: Metrics,
    ) -> None:
        poll = settings.webhook_poll_seconds
        super().__init__(
            "webhook sender", interval=poll, backoff=Backoff(initial=min(poll, 1.0), cap=30.0), logger=log
        )
        self.settings = settings
        self.schedule = RetrySchedule.of(
            settings.webhook_retry_schedule, settings.webhook_max_attempts, settings.webhook_retry_jitter
        )
        # Who holds a lease: unique per process, so that a restart never mistakes old leases for its own.
        self.owner = "sender-" + uuid.uuid4().hex[:16]
        self._sessionmaker = sessionmaker
        self._signer = signer
        self._box = box
        self._metrics = metrics
        self._client = guard.client(
            timeout=settings.webhook_timeout_seconds, headers={"User-Agent": "comfy-gateway-webhooks/1"}
        )
        self._inflight: set[asyncio.Task[None]] = set()
        # Deliveries this sender holds (leased, being sent), by id: their users. A delivery in here
        # is never claimed again, even if its lease ran out, so it is never sent twice at once.
        self._holding: dict[str, str] = {}

    # ---- life cycle ------------------------------------------------------------------------

    async def stop(self, timeout: float | None = None) -> None:
        await super().stop(timeout)
        for task in self._inflight:
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        # Attempts cut short are not recorded; their rows are due again at once, for the next sender.
        # Bounded: a stop must end; leases not given back expire (GATEWAY_WEBHOOK_LEASE_SECONDS).
        try:
            await asyncio.wait_for(self._release(), RELEASE_TIMEOUT)
        except TimeoutError:
            log.warning(
                "stopping: could not give back the webhook leases in %g s; they expire instead",
                RELEASE_TIMEOUT,
            )
        await self._client.aclose()

    # ---- one round -------------------------------------------------------------------------

    async def run_once(self, *, wait: bool = False) -> int:
        """Lease the deliveries due now (as many as there are free sending slots, and no more of a
        user's than its share) and start their attempts; returns how many were leased. With
        `wait`, until those attempts are recorded.

        Each attempt is a task of its own, so one slow receiver (up to GATEWAY_WEBHOOK_TIMEOUT_SECONDS)
        never holds up the others. Leasing and reading the jobs and secrets is one short database
        visit per round; each attempt is recorded in one more. No connection is held while a
        receiver answers."""
        free = self.settings.webhook_max_inflight - len(self._holding)
        if free <= 0:
            return 0
        share = self.settings.webhook_max_inflight_per_user
        per_user = Counter(self._holding.values())
        # Taken before the lease is: the lease never ends sooner than this sender believes.
        lease_end = time.monotonic() + self.settings.webhook_lease_seconds
        async with self._sessionmaker() as session:
            due = await repo.claim_due(
                session,
                owner=self.owner,
                lease_seconds=self.settings.webhook_lease_seconds,
                limit=min(free, BATCH),
                skip_ids=list(self._holding),
                skip_users=[user for user, n in per_user.items() if n >= share],
            )
            if not due:
                return 0
            leased = len(due)
            due, over = _within_shares(due, per_user, share)
            self._holding.update((d.id, d.user_id) for d in due)
            try:
                if over:
                    # Past their user's share: due again at once, for a round with a free slot of theirs.
                    await repo.release(session, self.owner, over)
                    await session.commit()
                bodies = await self._bodies(session, due)
            except BaseException:
                await self._let_go([d.id for d in due])
                raise
        try:
            secrets = await self._secrets({d.user_id for d in due})
        except BaseException:
            await self._let_go([d.id for d in due])
            raise
        started = self._start_attempts(due, bodies, secrets, lease_end)
        if wait and started:
            await asyncio.gather(*started, return_exceptions=True)
        if leased == min(free, BATCH):
            self.wake()  # more may be due
        return len(due)

    def _start_attempts(
        self,
        due: list[WebhookDelivery],
        bodies: dict[str, str],
        secrets: dict[str, list[str]],
        lease_end: float,
    ) -> list[asyncio.Task[None]]:
        """One task per leased delivery whose job is still there; the others are let go of."""
        started = []
        for delivery in due:
            if delivery.id not in bodies:
                self._holding.pop(delivery.id, None)
                continue  # its job is gone, and the row with it
            task = asyncio.create_task(
                self._send(delivery, bodies[delivery.id], secrets[delivery.user_id], lease_end),
                name=f"webhook {delivery.id}",
            )
            self._inflight.add(task)
            task.add_done_callback(functools.partial(self._sent_callback, delivery))
            started.append(task)
        return started

    def _sent_callback(self, delivery: WebhookDelivery, task: asyncio.Task[None]) -> None:
        self._sent(task, delivery)

    def _sent(self, task: asyncio.Task[None], delivery: WebhookDelivery) -> None:
        full = len(self._holding) >= self.settings.webhook_max_inflight
        user_full = (
            Counter(self._holding.values())[delivery.user_id] >= self.settings.webhook_max_inflight_per_user
        )
        self._inflight.discard(task)
        self._holding.pop(delivery.id, None)
        if not task.cancelled() and task.exception() is not None:
            # Its lease expires and the delivery is tried again.
            log.error("webhook task %s failed", task.get_name(), exc_info=task.exception())
        if full or user_full:
            self.wake()  # a slot is free again

    async def _let_go(self, ids: list[str]) -> None:
        for delivery_id in ids:
            self._holding.pop(delivery_id, None)
        await self._release(ids)

    async def _send(self, delivery: WebhookDelivery, body: str, secrets: list[str], lease_end: float) -> None:
        # The attempt must end before the lease does, and early enough to be recorded under it.
        margin = min(
            LEASE_MARGIN, (self.settings.webhook_lease_seconds - self.settings.webhook_timeout_seconds) / 2
        )
        budget = min(self.settings.webhook_timeout_seconds, lease_end - time.monotonic() - margin)
        if budget <= 0:
            # The round took most of the lease (a slow database): sent later instead, under a new one.
            log.warning("webhook %s: its lease is nearly over before the attempt; given back", delivery.id)
            await self._release([delivery.id])
            return
        attempted_at, outcome, duration_ms = await self._attempt(delivery, body, secrets, budget)
        async with self._sessionmaker() as session:
            row = await self._record(session, delivery, attempted_at, outcome, duration_ms)
            await session.commit()
        label = "succeeded" if outcome.succeeded else ("refused" if outcome.refused else "failed")
        self._metrics.webhook_attempts.labels(label).inc()
        self._metrics.webhook_attempt_seconds.observe(duration_ms / 1000)
        if row is not None and row.status != "pending":
            self._metrics.webhook_deliveries.labels(row.status).inc()

    async def _release(self, ids: list[str] | None = None) -> None:
        try:
            async with self._sessionmaker() as session:
                await repo.release(session, self.owner, ids)
                await session.commit()
        except Exception:  # noqa: BLE001 - the leases expire anyway
            log.exception("could not release webhook leases")

    async def _bodies(self, session: AsyncSession, due: list[WebhookDelivery]) -> dict[str, str]:
        """Each delivery's body, rendered at each attempt from the job row (output URLs freshly
        signed, so a receiver can download what a late retry announces)."""
        jobs = {job.id: job for job in await jobs_repo.get_jobs(session, list({d.job_id for d in due}))}
        outputs = await jobs_repo.outputs_for(session, list(jobs))
        bodies: dict[str, str] = {}
        for delivery in due:
            job = jobs.get(delivery.job_id)
            if job is None:
                continue
            view = job_view(
                job,
                outputs[job.id],
                self._signer,
                queue_position=await jobs_repo.queue_position(session, job),
            )
            payload: dict[str, Any] = {
                "type": delivery.event,
                "timestamp": rfc3339(delivery.created_at),
                "data": view,
            }
            bodies[delivery.id] = json.dumps(payload, separators=(",", ":"))
        return bodies

    async def _secrets(self, user_ids: set[str]) -> dict[str, list[str]]:
        """Each user's signing secrets, made for a user who has none. In a session of its own,
        after the deliveries' has closed: making a first secret may lose a race with another
        replica, and the rollback that follows would expire the leased deliveries if they were in
        its session (then unreadable, and the round lost until the leases expire)."""
        async with self._sessionmaker() as session:
            return {uid: await signing_secrets(session, self._box, uid) for uid in user_ids}

    async def _attempt(
        self, delivery: WebhookDelivery, body: str, secrets: list[str], budget: float
    ) -> tuple[datetime, Outcome, float]:
        attempted_at = utcnow()
        started = time.monotonic()
        try:
            # One bound for the whole attempt (connect, send, answer): httpx's own timeouts bound
            # each read, and a receiver that sends its answer a byte at a time never trips them.
            async with asyncio.timeout(budget):
                outcome = await self._post(delivery, body, secrets, attempted_at)
        except TimeoutError:
            outcome = Outcome(error=TIMEOUT, detail=f"no complete answer within {budget:.3g} s")
        duration_ms = (time.monotonic() - started) * 1000
        if not outcome.succeeded:
            log.info(
                "webhook %s (%s, job %s) attempt %d failed: %s (%s)",
                delivery.id,
                delivery.event,
                delivery.job_id,
                delivery.attempts + 1,
                outcome.error,
                outcome.detail,
            )
        return attempted_at, outcome, duration_ms

    async def _record(
        self,
        session: AsyncSession,
        delivery: WebhookDelivery,
        attempted_at: datetime,
        outcome: Outcome,
        duration_ms: float,
    ) -> WebhookDelivery | None:
        next_at: datetime | None = None
        if not outcome.succeeded and not outcome.stop:
            delay = self.schedule.next_delay(
                delivery.attempts + 1,
                retry_after=outcome.retry_after,
                retry_after_cap=self.settings.webhook_retry_after_max_seconds,
            )
            if delay is not None:
                next_at = utcnow() + timedelta(seconds=delay)
        return await repo.record_attempt(
            session,
            delivery,
            owner=self.owner,
            attempted_at=attempted_at,
            duration_ms=duration_ms,
            status_code=outcome.status_code,
            error=outcome.error,
            succeeded=outcome.succeeded,
            next_attempt_at=next_at,
        )

    async def _post(self, delivery: WebhookDelivery, body: str, secrets: list[str], now: datetime) -> Outcome:
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": sign(secrets, delivery.id, now, body),
        }
        try:
            # Streamed and not read: a receiver's answer is its status; its body could be anything.
            async with self._client.stream(
                "POST", delivery.url, content=body.encode(), headers=headers
            ) as resp:
                code = resp.status_code
                if 200 <= code < 300:
                    return Outcome(code, succeeded=True)
                if code == 410:
                    # The receiver wants no more deliveries.
                    return Outcome(code, GONE, stop=True)
                if 300 <= code < 400:
                    return Outcome(code, REDIRECT)
                return Outcome(
                    code,
                    HTTP_STATUS,
                    retry_after=parse_retry_after(resp.headers.get("retry-after"), time.time()),
                )
        except UnsafeRequest as exc:
            return Outcome(error=REFUSED, detail=exc.reason, refused=True)
        except httpx.TimeoutException as exc:
            return Outcome(error=TIMEOUT, detail=type(exc).__name__)
        except httpx.HTTPError as exc:
            return Outcome(error=CONNECTION_FAILED, detail=f"{type(exc).__name__}: {exc}"[:500])
        except Exception as exc:  # noqa: BLE001 - whatever a URL or a receiver does, it is one failed attempt
            log.warning("webhook %s: unexpected error sending", delivery.id, exc_info=True)
            return Outcome(error=SEND_FAILED, detail=type(exc).__name__)


def _within_shares(
    due: list[WebhookDelivery], per_user: Counter[str], share: int
) -> tuple[list[WebhookDelivery], list[str]]:
    """The deliveries that fit their user's share of sending slots (counted into `per_user`), and
    the ids of those past it."""
    kept, over = [], []
    for delivery in due:
        if per_user[delivery.user_id] < share:
            per_user[delivery.user_id] += 1
            kept.append(delivery)
        else:
            over.append(delivery.id)
    return kept, over
