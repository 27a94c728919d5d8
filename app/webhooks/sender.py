"""The webhook sender: a supervised loop, owned by the app's lifespan, that sends due outbox rows.

Rows are the truth: a delivery is leased (app/db/webhooks.py) before it is sent and its attempt
recorded after, so a crash loses nothing (the lease expires and another sender, or this one after
a restart, takes it) and two replicas never send the same attempt at once. Nothing here touches
the job: a receiver that fails, hangs or lies never affects the job or the API.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
import uuid
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
from app.metrics import Metrics
from app.net.ssrf import OutboundGuard, UnsafeRequest
from app.storage.signing import UrlSigner
from app.webhooks.retry import RetrySchedule

log = logging.getLogger("app.webhooks")

# Deliveries leased per round, and attempts in flight at once, per sender.
BATCH = 32
MAX_INFLIGHT = 128
#: How long a stopping sender tries to give back its leases.
RELEASE_TIMEOUT = 5.0


@dataclass(slots=True)
class Outcome:
    status_code: int | None = None
    error: str | None = None
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


class WebhookSender:
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
        self._wake_event = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopping = False

    # ---- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._main = asyncio.create_task(self.run(), name="webhook sender")

    async def stop(self) -> None:
        self._stopping = True
        if self._main is not None:
            self._main.cancel()
            await asyncio.gather(self._main, return_exceptions=True)
        for task in self._inflight:
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        # Attempts cut short are not recorded; their rows are due again at once, for the next sender.
        # Bounded: a stop must end; leases not given back expire (GATEWAY_WEBHOOK_LEASE_SECONDS).
        try:
            await asyncio.wait_for(self._release(), RELEASE_TIMEOUT)
        except TimeoutError:
            log.warning("stopping: could not give back the webhook leases in %g s; they expire instead", RELEASE_TIMEOUT)
        await self._client.aclose()

    def wake(self) -> None:
        self._wake_event.set()

    async def run(self) -> None:
        """The supervised loop: a failed round is logged and retried, never fatal."""
        while not self._stopping:
            self._wake_event.clear()
            try:
                await self.run_once(wait=False)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("webhook round failed")
            try:
                await asyncio.wait_for(self._wake_event.wait(), timeout=self.settings.webhook_poll_seconds)
            except TimeoutError:
                pass

    # ---- one round -------------------------------------------------------------------------

    async def run_once(self, *, wait: bool = True) -> int:
        """Lease the deliveries due now (as many as there are free sending slots) and start their
        attempts; returns how many. With `wait`, until those attempts are recorded.

        Each attempt is a task of its own, so one slow receiver (up to the 15 s timeout) never
        holds up the others. Leasing and reading the jobs and secrets is one short database
        visit per round; each attempt is recorded in one more. No connection is held while a
        receiver answers."""
        free = MAX_INFLIGHT - len(self._inflight)
        if free <= 0:
            return 0
        async with self._sessionmaker() as session:
            due = await repo.claim_due(
                session, owner=self.owner, lease_seconds=self.settings.webhook_lease_seconds, limit=min(free, BATCH)
            )
            if not due:
                return 0
            try:
                bodies = await self._bodies(session, due)
            except BaseException:
                await self._release([d.id for d in due])
                raise
        try:
            secrets = await self._secrets({d.user_id for d in due})
        except BaseException:
            await self._release([d.id for d in due])
            raise
        started = []
        for delivery in due:
            if delivery.id not in bodies:
                continue  # its job is gone, and the row with it
            task = asyncio.create_task(
                self._send(delivery, bodies[delivery.id], secrets[delivery.user_id]), name=f"webhook {delivery.id}"
            )
            self._inflight.add(task)
            task.add_done_callback(self._sent)
            started.append(task)
        if wait and started:
            await asyncio.gather(*started, return_exceptions=True)
        if len(due) == min(free, BATCH):
            self.wake()  # more may be due
        return len(due)

    def _sent(self, task: asyncio.Task[None]) -> None:
        full = len(self._inflight) >= MAX_INFLIGHT
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Its lease expires and the delivery is tried again.
            log.error("webhook task %s failed", task.get_name(), exc_info=task.exception())
        if full:
            self.wake()  # a slot is free again

    async def _send(self, delivery: WebhookDelivery, body: str, secrets: list[str]) -> None:
        attempted_at, outcome, duration_ms = await self._attempt(delivery, body, secrets)
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
            view = job_view(job, outputs[job.id], self._signer, queue_position=await jobs_repo.queue_position(session, job))
            payload: dict[str, Any] = {"type": delivery.event, "timestamp": rfc3339(delivery.created_at), "data": view}
            bodies[delivery.id] = json.dumps(payload, separators=(",", ":"))
        return bodies

    async def _secrets(self, user_ids: set[str]) -> dict[str, list[str]]:
        """Each user's signing secrets, made for a user who has none. In a session of its own,
        after the deliveries' has closed: making a first secret may lose a race with another
        replica, and the rollback that follows would expire the leased deliveries if they were in
        its session (then unreadable, and the round lost until the leases expire)."""
        async with self._sessionmaker() as session:
            return {uid: await signing_secrets(session, self._box, uid) for uid in user_ids}

    async def _attempt(self, delivery: WebhookDelivery, body: str, secrets: list[str]) -> tuple[datetime, Outcome, float]:
        attempted_at = utcnow()
        started = time.monotonic()
        outcome = await self._post(delivery, body, secrets, attempted_at)
        duration_ms = (time.monotonic() - started) * 1000
        if not outcome.succeeded:
            log.info(
                "webhook %s (%s, job %s) attempt %d failed: %s",
                delivery.id, delivery.event, delivery.job_id, delivery.attempts + 1, outcome.error,
            )
        return attempted_at, outcome, duration_ms

    async def _record(
        self, session: AsyncSession, delivery: WebhookDelivery, attempted_at: datetime, outcome: Outcome, duration_ms: float
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
            async with self._client.stream("POST", delivery.url, content=body.encode(), headers=headers) as resp:
                code = resp.status_code
                if 200 <= code < 300:
                    return Outcome(code, succeeded=True)
                if code == 410:
                    return Outcome(code, "410 Gone: the receiver wants no more deliveries", stop=True)
                if 300 <= code < 400:
                    return Outcome(code, f"HTTP {code}: redirects are not followed")
                return Outcome(code, f"HTTP {code}", retry_after=parse_retry_after(resp.headers.get("retry-after"), time.time()))
        except UnsafeRequest as exc:
            return Outcome(error=f"refused: {exc.reason}", refused=True)
        except httpx.TimeoutException:
            return Outcome(error=f"timed out after {self.settings.webhook_timeout_seconds:g} s")
        except httpx.HTTPError as exc:
            return Outcome(error=f"{type(exc).__name__}: {exc}"[:500] if str(exc) else type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - whatever a URL or a receiver does, it is one failed attempt
            log.warning("webhook %s: unexpected error sending", delivery.id, exc_info=True)
            return Outcome(error=f"could not send ({type(exc).__name__})")
