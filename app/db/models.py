"""The tables. Rows are the truth: no job state lives only in memory."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.db.types import BigIntPK, UTCDateTime, utcnow

# Explicit constraint names so that Alembic migrations are the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Only the limits set for this user; absent members fall back to the deployment's defaults.
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    # sha256 of the whole key: keys are 256-bit random, so a fast hash is enough and allows lookup.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the key, to help people tell their keys apart; not secret.
    hint: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class Template(Base):
    __tablename__ = "templates"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


#: A job's statuses, the one definition (the API contract's `status`). A job moves forward only:
#: queued -> running -> one of TERMINAL (queued may also end directly, or go back from running).
JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
ACTIVE: tuple[JobStatus, ...] = ("queued", "running")
TERMINAL: tuple[JobStatus, ...] = ("succeeded", "failed", "canceled")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # The dispatcher's reads of jobs in flight, and of canceled jobs to clean up.
        Index("ix_jobs_status_backend", "status", "backend"),
        # A user's job list, newest first; the jobs-per-day count.
        Index("ix_jobs_user_created", "user_id", "created_at"),
        # A user's next jobs in dispatch order; its prefix: a user's queued and running counts.
        Index("ix_jobs_user_pick", "user_id", "status", text("priority DESC"), "created_at", "id"),
        # The jobs ahead of a queued one, a contiguous range (queue_position).
        Index("ix_jobs_queue_order", "status", "backend", text("priority DESC"), "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # One of JOB_STATUSES.
    status: Mapped[str] = mapped_column(String(16), default="queued")
    template: Mapped[str | None] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Deferred, and loading them by accident raises: only the dispatcher's pick needs the graph
    # and the inputs to stage, and decoding a workflow on every transition and view was a large
    # share of a job's CPU (bench/throughput.py).
    workflow: Mapped[dict[str, Any]] = mapped_column(JSON, deferred=True, deferred_raiseload=True)
    # The node ids whose files the job returns.
    output_nodes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    # Dispatch: a queued job with a backend and prompt id has been handed to that backend
    # (or is being); `status` turns to running when ComfyUI starts executing it.
    backend: Mapped[str | None] = mapped_column(String(500), default=None)
    prompt_id: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    timeout_seconds: Mapped[float | None] = mapped_column(Float, default=None)

    # Why a queued job waits (no healthy backend can run it now); cleared when it is dispatched.
    waiting_reason: Mapped[str | None] = mapped_column(String(500), default=None)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # The id of the job's last event (job_events.seq): bumped in the same UPDATE that writes an
    # event, so the row lock orders a job's events on every replica.
    event_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    # The input files staged onto the backend at each dispatch (app/dispatch/staging.py):
    # [{"param", "upload_id", "binds": [[node_id, input_name], ...], "mask_of": param | null}].
    inputs: Mapped[list[Any]] = mapped_column(JSON, default=list, deferred=True, deferred_raiseload=True)
    # Keep `temp` files (previews) as outputs too: the template's `keep_temp`.
    keep_temp: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set when retention deleted the job's output files (the job row stays, as a tombstone).
    outputs_expired_at: Mapped[datetime | None] = mapped_column(default=None)
    # Webhook: where and for which events (job.running, job.succeeded ...); null when none.
    webhook_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    webhook_events: Mapped[list[Any] | None] = mapped_column(JSON, default=None)


class JobCount(Base):
    """A user's active jobs per state (`queued`, `dispatched`, `running`), kept by triggers on
    `jobs` in the transaction that changes them (migration 0009): read instead of counting."""

    __tablename__ = "job_counts"

    user_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(Integer, server_default="0")


class JobCreatedHour(Base):
    """Jobs a user created in an hour (hours since the epoch), kept by a trigger on `jobs`
    (migration 0009): the jobs_per_day quota sums these instead of counting the user's day."""

    __tablename__ = "job_created_hours"

    user_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    n: Mapped[int] = mapped_column(Integer, server_default="0")


class Output(Base):
    __tablename__ = "outputs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    node_id: Mapped[str] = mapped_column(String(64))
    # The key in ComfyUI's history output: images, gifs, videos, audio, text...
    kind: Mapped[str] = mapped_column(String(32), default="images")
    filename: Mapped[str] = mapped_column(String(500))
    content_type: Mapped[str] = mapped_column(String(100))
    # 64-bit: a video output can pass 2 GiB.
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Upload(Base):
    """An input file a user stored (POST /v1/uploads, or an image param given as a URL or data: URI)."""

    __tablename__ = "uploads"
    __table_args__ = (
        # A user's uploads; the retention loop's scan by age.
        Index("ix_uploads_user_created", "user_id", "created_at"),
        Index("ix_uploads_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # The client's file name, made safe; only shown back, never used as a path.
    filename: Mapped[str] = mapped_column(String(255))
    # Sniffed from the bytes, never taken from the client.
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer, default=None)
    height: Mapped[int | None] = mapped_column(Integer, default=None)
    storage_key: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RateBucket(Base):
    """A user's token bucket for the per-minute request rate, in the database so that every replica
    spends from the same bucket (see app/db/ratelimit.py)."""

    __tablename__ = "rate_buckets"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    tokens: Mapped[float] = mapped_column(Double)
    # Unix seconds of the last refill, as a number: the refill is plain arithmetic in one UPDATE,
    # the same on SQLite and PostgreSQL.
    refilled_at: Mapped[float] = mapped_column(Double)


class GatewayState(Base):
    """Small key/value facts the gateway keeps for itself (e.g. the generated signing secret)."""

    __tablename__ = "gateway_state"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class WebhookSecret(Base):
    """A user's webhook signing secrets, newest generation first in use. A rotated-out secret keeps
    signing until `expires_at`. The secret must stay usable for HMAC, so it cannot be hashed: it is
    kept encrypted (Fernet, see app/webhooks/secrets.py)."""

    __tablename__ = "webhook_secrets"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    # 1, 2, ...: the primary key makes two replicas creating or rotating at once collide, not fork.
    generation: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookDelivery(Base):
    """The webhook outbox: one row per (job, event), written in the transaction of the job's
    transition; a sender claims due rows with a lease and records every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # The sender's scan of due deliveries.
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
        # One delivery per job and event: a job that runs again after failover is not announced twice.
        UniqueConstraint("job_id", "event"),
    )

    # Also the `webhook-id` header: the same on every attempt, so receivers can drop duplicates.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # job.running | job.succeeded | job.failed | job.canceled
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2000))
    # pending (due at next_attempt_at) | succeeded | failed (no more attempts)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # Attempts in the current round (the retry schedule's position); an admin's redeliver resets it.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    # Which sender holds the row, until when (then another may take it: a crash loses no delivery).
    lease_owner: Mapped[str | None] = mapped_column(String(40), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[float] = mapped_column(Double)
    # The receiver's HTTP status; null when none came (refused address, timeout, connection error).
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(String(500), default=None)
    succeeded: Mapped[bool] = mapped_column(Boolean, default=False)


class Backend(Base):
    """A ComfyUI server the dispatcher sends work to. Every replica's dispatcher re-reads this
    table on its poll, so a backend added or drained through one replica reaches all of them."""

    __tablename__ = "backends"

    # Opaque and URL-safe (a UUID), so that the admin API's paths never carry a URL.
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # Normalized base URL (no trailing slash): the key jobs refer to in `jobs.backend`.
    url: Mapped[str] = mapped_column(String(500), unique=True)
    # active | draining (no new jobs; the ones it holds finish there)
    state: Mapped[str] = mapped_column(String(16), default="active")
    # env (from GATEWAY_COMFYUI_URLS) | admin (added through the admin API)
    source: Mapped[str] = mapped_column(String(16), default="admin")
    added_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # What it can run (node classes and list choices, app/dispatch/capabilities.py), as the replica
    # that follows it last read it: the other replicas read it only when the digest changed.
    capabilities: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, default=None, deferred=True, deferred_raiseload=True
    )
    capabilities_digest: Mapped[str | None] = mapped_column(String(64), default=None)
    capabilities_at: Mapped[datetime | None] = mapped_column(default=None)


class JobEvent(Base):
    """A job's live events (status, progress, output), kept so that a client that reconnects with
    `Last-Event-ID` gets what it missed. `seq` is the job's own counter (`jobs.event_seq`), so ids
    are monotonic per job and the same on every replica. Bounded: see app/db/job_events.py."""

    __tablename__ = "job_events"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    event: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    """An `Idempotency-Key` a user sent to POST /v1/generate. Inserted before the job is made (the
    unique key decides which of two concurrent requests goes ahead); `job_id` is set in the
    transaction that stores the job, so a row without one is a request still being processed."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Asset(Base):
    """A Comfy API v2 asset: an input file a user stored through /api/v2/assets, content-addressed
    (blake3) and deduplicated per user: the same bytes sent twice are one asset."""

    __tablename__ = "assets"
    __table_args__ = (
        UniqueConstraint("user_id", "hash"),
        # A workflow may name an asset by the file name its owner gave it.
        Index("ix_assets_user_file_path", "user_id", "file_path"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # `blake3:<hex>`, computed by the gateway from the bytes it received.
    hash: Mapped[str] = mapped_column(String(80))
    file_path: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class V2IdempotencyKey(Base):
    """An `Idempotency-Key` of POST /api/v2/jobs. Single-use (the v2 contract): a second request
    with the same key is refused, never replayed, so a row is only written with its job."""

    __tablename__ = "v2_idempotency_keys"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GatewayReplica(Base):
    """A gateway process that dispatches (PostgreSQL only): its heartbeat says it is alive, and the
    live ones share the backends evenly (app/dispatch/leases.py). Times are the database's clock."""

    __tablename__ = "gateway_replicas"

    # Random per process start: a restarted replica is a new one.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # host:pid, for people reading the admin view.
    name: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(default=utcnow)


class BackendLease(Base):
    """Which replica follows a backend (PostgreSQL only): at most one at a time. `generation`
    grows at every acquisition, and every job transition of a dispatched job is conditional on
    its backend's lease still being held at the generation its owner acted under (the fence)."""

    __tablename__ = "backend_leases"

    # The backend's URL, as `jobs.backend` names it.
    backend: Mapped[str] = mapped_column(String(500), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    owner_name: Mapped[str | None] = mapped_column(String(200))
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    acquired_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column()
    # The owner's view of the backend's health, so that every replica can answer readiness.
    healthy: Mapped[bool] = mapped_column(Boolean, default=False)
