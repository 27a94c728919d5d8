"""Request bodies and response shapes of the public API (what /openapi.json documents)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from app.api.input_checks import RequestModel
from app.domain.limits import Limits

# The job's public shape is defined once, with the functions that build it from the row.
from app.domain.views import JobError as JobError
from app.domain.views import JobOut as JobOut
from app.domain.views import OutputOut as OutputOut
from app.domain.views import Progress as Progress

WebhookEvent = Literal["job.running", "job.succeeded", "job.failed", "job.canceled"]


class WebhookIn(RequestModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=2000,
        description="An http(s) URL; private and loopback addresses are refused "
        "unless GATEWAY_OUTBOUND_ALLOWLIST names them.",
    )
    events: list[WebhookEvent] | None = Field(
        default=None, min_length=1, description="Default: job.succeeded, job.failed, job.canceled."
    )


class GenerateRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")
    nul_allowed = frozenset({"metadata"})

    template: str | None = Field(default=None, max_length=64, description="A registered template's name.")
    workflow: dict[str, Any] | None = Field(
        default=None, description="A ComfyUI API-format graph, for users allowed to send raw workflows."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="The template's params.")
    priority: int = Field(
        default=0,
        ge=-1_000_000,
        le=1_000_000,
        description="Higher runs earlier within your share; capped at your `max_priority` (the job shows the "
        "priority it got). Below 0 runs after your default-priority jobs.",
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Echoed back untouched.")
    webhook: WebhookIn | None = Field(
        default=None,
        description="Where to POST the job's changes (signed per Standard Webhooks; see /v1/me/webhook-secret).",
    )
    timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="This job's time limit once it runs; it can only shorten the template's, and may not exceed the "
        "server's maximum. Past it the job is interrupted on its backend and fails with error type `timeout`.",
    )


class UploadOut(BaseModel):
    id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    width: int | None
    height: int | None
    created_at: str


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class TemplateSummary(BaseModel):
    name: str
    description: str | None
    params_schema: dict[str, Any]
    outputs: list[str]


class TemplateOut(TemplateSummary):
    workflow: dict[str, Any] | None = Field(default=None, description="Only for admins; absent otherwise.")


class TemplateList(BaseModel):
    items: list[TemplateSummary]
    next_cursor: str | None


class Usage(BaseModel):
    queued: int = Field(description="Jobs waiting to run (counted against max_queued).")
    running: int
    jobs_today: int = Field(description="Jobs created in the last 24 hours (counted against jobs_per_day).")
    rate_remaining: int | None = Field(
        description="Requests left in the per-minute bucket now (rate_per_minute); null when not limited."
    )


class MeOut(BaseModel):
    id: str
    name: str
    is_admin: bool
    limits: dict[str, Any]
    usage: Usage


class WebhookAttemptOut(BaseModel):
    attempted_at: str
    status_code: int | None = Field(description="The receiver's HTTP status; null when none came.")
    error: str | None = Field(
        description="Why the attempt failed (HTTP status, timeout, refused address ...)."
    )
    duration_ms: float
    succeeded: bool


class WebhookDeliveryOut(BaseModel):
    id: str = Field(description="Also the `webhook-id` header, the same on every attempt.")
    job_id: str
    event: WebhookEvent
    url: str
    status: Literal["pending", "succeeded", "failed"] = Field(
        description="pending: due at next_attempt_at; failed: no more attempts (exhausted, or the receiver answered 410)."
    )
    next_attempt_at: str | None
    last_error: str | None
    created_at: str
    attempts: list[WebhookAttemptOut]


class WebhookDeliveryList(BaseModel):
    items: list[WebhookDeliveryOut]
    next_cursor: str | None


class WebhookSecretOut(BaseModel):
    secret: str = Field(description="The `whsec_...` secret that signs your webhooks (Standard Webhooks).")
    created_at: str
    previous_expires_at: str | None = Field(
        description="After a rotation: until when the previous secret signs too (a second `v1,` signature)."
    )


class Problem(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str


# ---- admin ----------------------------------------------------------------------------------


class UserCreate(RequestModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    is_admin: StrictBool = False
    limits: Limits = Field(
        default_factory=Limits, description="The user's own limits; absent members: the defaults."
    )


class UserPatch(RequestModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    disabled: StrictBool | None = Field(
        default=None, description="A disabled user's keys get 401 from their next request."
    )
    limits: Limits | None = Field(
        default=None,
        description="Merged into the user's own limits; a member set to null goes back to the default.",
    )


class UserOut(BaseModel):
    id: str
    name: str
    is_admin: bool
    disabled: bool
    limits: dict[str, Any] = Field(
        description="Every limit that applies: the user's own values, else the defaults."
    )
    limit_overrides: dict[str, Any] = Field(description="Only the limits set for this user.")
    created_at: str


class UserList(BaseModel):
    items: list[UserOut]
    next_cursor: str | None


class KeyCreate(RequestModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200, description="A label, to tell keys apart.")


class KeyCreated(BaseModel):
    id: str
    name: str | None
    key: str = Field(description="The secret: shown this once, stored only as a hash.")
    created_at: str


class KeyOut(BaseModel):
    id: str
    name: str | None
    hint: str = Field(description="The key's first characters.")
    created_at: str
    revoked_at: str | None


class KeyList(BaseModel):
    items: list[KeyOut]
    next_cursor: str | None


class AdminJobOut(JobOut):
    user_id: str


class AdminJobList(BaseModel):
    items: list[AdminJobOut]
    next_cursor: str | None


class BackendCreate(RequestModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=500,
        description="The ComfyUI server's http(s) base URL, e.g. `http://10.0.0.5:8188` (a trailing slash is dropped).",
    )


class BackendHealth(BaseModel):
    status: Literal["up", "down", "unknown"] = Field(
        description="As this replica's dispatcher sees it; `unknown` on a replica that runs no dispatcher,"
        " or until its dispatcher picked the backend up (its next round when added through this replica, its"
        " next poll otherwise; so the answer to the POST that adds it says `unknown`)."
    )
    since: str | None = Field(description="When it last changed (RFC 3339).")
    last_error: str | None
    connected: bool = Field(description="Whether its WebSocket is up.")


class BackendLoad(BaseModel):
    in_flight: int = Field(
        description="Unfinished jobs handed to it (queued or running there), across all replicas."
    )
    backend_queue: int | None = Field(
        description="ComfyUI's own queue length (`queue_remaining`) as it last reported it."
    )


class BackendJobs(BaseModel):
    count: int
    ids: list[str] = Field(description="The ids of the oldest of those jobs (at most 100).")


class BackendCapabilities(BaseModel):
    node_classes: int = Field(description="How many node classes its /object_info lists.")
    models: dict[str, list[str]] = Field(
        description="Model files per kind (checkpoints, loras, vaes, upscale_models, text_encoders, ...)."
    )
    refreshed_at: str | None = Field(description="When its /object_info was last read (RFC 3339).")


class BackendLeaseOut(BaseModel):
    owner: str | None = Field(description="The owning replica's id (random per process start).")
    owner_name: str | None = Field(description="Its name: GATEWAY_REPLICA_NAME, or host:pid.")
    generation: int = Field(
        description="Grows at every takeover; transitions under an older one are refused."
    )
    acquired_at: str | None
    heartbeat_at: str | None = Field(description="Its last renewal (RFC 3339, the database's clock).")
    expires_at: str | None = Field(description="When others may take it unless renewed first.")


class BackendOut(BaseModel):
    id: str = Field(description="Opaque id (a UUID), stable for the backend's life in the pool.")
    url: str
    state: Literal["active", "draining"] = Field(
        description="`draining`: no new jobs go to it; the jobs it holds finish there."
    )
    source: Literal["env", "admin"] = Field(
        description="From GATEWAY_COMFYUI_URLS, or added through this API."
    )
    added_at: str
    health: BackendHealth
    load: BackendLoad
    jobs: BackendJobs
    capabilities: BackendCapabilities | None = Field(description="Null until its /object_info was read.")
    lease: BackendLeaseOut | None = Field(
        default=None,
        description="Which dispatching replica follows it (PostgreSQL; null on SQLite, where one process"
        " dispatches). `owner` is null while no replica holds it.",
    )


class BackendList(BaseModel):
    items: list[BackendOut]
    next_cursor: str | None


PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}}
    for code in (401, 403, 404, 409, 413, 422, 429)
}
PROBLEMS[413] = {
    **PROBLEMS[413],
    "description": "The request body is larger than GATEWAY_MAX_BODY_BYTES (uploads: GATEWAY_MAX_UPLOAD_BYTES).",
}
PROBLEMS[429] = {
    **PROBLEMS[429],
    "description": "Over a limit; the problem's `limit` member names it (rate_per_minute, max_queued, jobs_per_day).",
    "headers": {
        "Retry-After": {
            "description": "Seconds until the request can succeed.",
            "schema": {"type": "integer"},
        },
        "RateLimit-Policy": {
            "description": 'The limit\'s policy (draft-ietf-httpapi-ratelimit-headers), e.g. `"per-minute";q=120;w=60`.',
            "schema": {"type": "string"},
        },
        "RateLimit": {
            "description": 'What is left of it, e.g. `"per-minute";r=0;t=2`.',
            "schema": {"type": "string"},
        },
    },
}
