"""Settings: one `Settings` object read from the environment (prefix `GATEWAY_`) and `.env`.

This module imports nothing from `app`, so every layer can depend on it.
The names of the settings are part of the public contract; every one is documented in `.env.example`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ADMIN_KEY_MIN_LENGTH = 24


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


#: The range of each numeric per-user limit, the one definition: the deployment's defaults
#: (GATEWAY_DEFAULT_<NAME>) and a user's own values (app/domain/limits.py) are checked against it.
LIMIT_RANGES: dict[str, dict[str, int]] = {
    "max_queued": {"ge": 1, "le": 1_000_000},
    "max_running": {"ge": 1, "le": 10_000},
    "rate_per_minute": {"ge": 1, "le": 1_000_000},
    "jobs_per_day": {"ge": 1, "le": 100_000_000},
    "max_priority": {"ge": 0, "le": 1_000_000},
    "weight": {"ge": 1, "le": 100},
}


def _limit(name: str) -> object:
    """The Field that bounds a default limit (Annotated, so type checkers see a plain int)."""
    return Field(**LIMIT_RANGES[name])  # type: ignore[call-overload]


class Settings(BaseSettings):
    # Errors name the setting but never echo its value: several settings are secrets.
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    # --- storage and database -------------------------------------------------------------
    database_url: str = "sqlite+aiosqlite:///./data/gateway.db"
    storage_dir: Path = Path("./data/outputs")
    auto_migrate: bool = True

    # --- backends ---------------------------------------------------------------------------
    comfyui_urls: Annotated[list[str], NoDecode] = ["http://127.0.0.1:8188"]
    # Prompts kept in flight per backend: with 2, ComfyUI always has the next prompt queued
    # when one finishes, so the GPU never waits for the gateway's round trip.
    max_inflight_per_backend: int = Field(default=2, ge=1, le=64)
    backend_timeout_seconds: float = Field(default=30.0, gt=0)
    # How often the dispatcher looks at the queue when nothing woke it (other replicas, retries).
    dispatch_poll_seconds: float = Field(default=1.0, gt=0)
    # A backend whose WebSocket is down, or which refuses connections, is retried after this long.
    backend_retry_seconds: float = Field(default=2.0, gt=0)
    # A job whose backend lost it this many times fails with `backend_lost`.
    max_attempts: int = Field(default=3, ge=1, le=100)
    # The longest a job may run on a backend; also the limit of a job whose template sets none.
    max_job_seconds: float = Field(default=3600.0, gt=0)
    # After interrupting a job that ran past its limit, how long the backend has to confirm.
    interrupt_grace_seconds: float = Field(default=10.0, gt=0)
    # A backend's socket is pinged this often and dropped when a pong takes longer: a socket that
    # stalls silently is found within two intervals, and missed events are read from /history.
    ws_ping_seconds: float = Field(default=10.0, gt=0)
    # Largest message accepted on a backend's socket: previews of big images are megabytes, but a
    # backend must not make the gateway buffer without bound. Over it the socket is closed (1009)
    # and reconnected, like any lost socket.
    backend_ws_max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # A backend unreachable for this long loses its unfinished jobs to the others.
    failover_grace_seconds: float = Field(default=30.0, gt=0)
    # Each backend's /system_stats is checked this often; after this many failures in a row it
    # is marked down (no new work), socket or not, until a check succeeds again.
    health_check_seconds: float = Field(default=5.0, gt=0)
    health_failures: int = Field(default=3, ge=1, le=100)

    # --- backend pool (admin API, capability refresh) ------------------------------------------
    # Each backend's /object_info (node classes, model files) is read again this often, besides
    # on every reconnect, so a model file added to a running ComfyUI becomes routable.
    object_info_refresh_seconds: float = Field(default=300.0, gt=0)

    # --- auth -------------------------------------------------------------------------------
    # Bypasses every limit and is compared directly: refused at start when shorter than
    # ADMIN_KEY_MIN_LENGTH, so a guessable one never goes live.
    admin_api_key: str | None = None
    # Secret for signing output URLs. When unset, one is generated once and kept in the database,
    # so that URLs stay valid across restarts and replicas.
    signing_secret: str | None = None
    # The same secrets read from files (Docker/Kubernetes secrets), for when the environment is
    # not private enough; the file's trailing newline is not part of the secret.
    signing_secret_file: Path | None = None
    signed_url_ttl_seconds: int = Field(default=3600, ge=10)
    # The gateway's address as clients reach it (e.g. behind a reverse proxy), for the absolute
    # links of /api/v2 (job urls, output and asset urls). Unset: each request's own scheme and host.
    public_base_url: str | None = None

    # --- per-user defaults ------------------------------------------------------------------
    # LIMIT_RANGES, as a user's own limits (app/domain/limits.py). A limit of 0 is not allowed:
    # to stop a user, disable it.
    default_max_queued: Annotated[int, _limit("max_queued")] = 100
    default_max_running: Annotated[int, _limit("max_running")] = 4
    default_rate_per_minute: Annotated[int, _limit("rate_per_minute")] = 120
    default_jobs_per_day: Annotated[int, _limit("jobs_per_day")] = 5000
    default_max_priority: Annotated[int, _limit("max_priority")] = 0
    default_allow_raw_workflows: bool = False
    # A user's share in fair scheduling, relative to the other users with queued work.
    default_weight: Annotated[int, _limit("weight")] = 1

    # --- raw workflows ----------------------------------------------------------------------
    # Node classes a raw workflow may not use. The default: the stock nodes that read or write
    # server files by a name the workflow chooses, outside the files the gateway collects.
    #  - LoadImageOutput reads any image in ComfyUI's output folder, which holds every user's
    #    results; LoadLatent, LoadImageSetFromFolderNode and LoadImageTextSetFromFolderNode read
    #    files or whole folders of the shared input folder (other users' inputs).
    #  - Preview3D and Preview3DAnimation take a free-text STRING `model_file` path to a server file.
    #  - SaveLatent, CheckpointSave, CLIPSave, VAESave, ModelSave, ImageOnlyCheckpointSave,
    #    LoraSave and SaveLoRANode write latents and model weights (gigabytes) under a free-text
    #    `filename_prefix`/`prefix` that may name sub-folders; the gateway neither collects nor
    #    cleans those files.
    # (Found in the recorded /object_info of stock ComfyUI, comfy_emulator/data/object_info_full.json:
    # loaders and savers with a STRING path/prefix input or a folder COMBO.) Inputs that name an
    # uploaded file (LoadImage.image and every other *_upload input) are refused separately, see
    # app/domain/workflows.py.
    raw_workflow_deny_nodes: Annotated[list[str], NoDecode] = [
        "LoadImageOutput",
        "LoadLatent",
        "LoadImageSetFromFolderNode",
        "LoadImageTextSetFromFolderNode",
        "Preview3D",
        "Preview3DAnimation",
        "SaveLatent",
        "CheckpointSave",
        "CLIPSave",
        "VAESave",
        "ModelSave",
        "ImageOnlyCheckpointSave",
        "LoraSave",
        "SaveLoRANode",
    ]
    # When not empty, a raw workflow may use only these node classes (and none that is denied).
    raw_workflow_allow_nodes: Annotated[list[str], NoDecode] = []

    # --- bounds -----------------------------------------------------------------------------
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_metadata_bytes: int = Field(default=16 * 1024, ge=0)
    # Longest value of any string param, whatever the template says (its maxLength applies too).
    max_param_string_length: int = Field(default=10_000, ge=1)
    # Most nodes in a raw workflow.
    max_workflow_nodes: int = Field(default=500, ge=1)

    # --- inputs and outputs (uploads, staging, retention) ------------------------------------
    # Largest upload (POST /v1/uploads: 413 above) and largest image fetched from a URL param
    # (422 above, naming the param), in bytes. Uploads are streamed, so this bounds disk use, not memory.
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    # Largest decoded `data:` URI image param, in bytes (422 above); the request body limit
    # (GATEWAY_MAX_BODY_BYTES) applies to the whole request too.
    max_data_uri_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # Most pixels of an accepted image (width x height): a tiny file can decode into gigabytes.
    max_image_pixels: int = Field(default=64 * 1024 * 1024, ge=1)
    # Most frames of an accepted image (animated GIF/WEBP/PNG, multi-page TIFF): LoadImage decodes
    # every frame into one tensor, so GATEWAY_MAX_IMAGE_PIXELS bounds frames x width x height too.
    max_image_frames: int = Field(default=100, ge=1)
    # Storage quota of each user's uploads (files sent, data: URIs and fetched image URLs alike):
    # over either, 409 `quota-exceeded` naming the limit, until the user deletes some.
    max_uploads_per_user: int = Field(default=1000, ge=1)
    max_upload_bytes_per_user: int = Field(default=1024 * 1024 * 1024, ge=1024)
    # Most bytes one job may store as outputs; a job over it fails with `output_too_large`.
    max_job_output_bytes: int = Field(default=2 * 1024 * 1024 * 1024, ge=1)
    # `?format=` conversions snap `quality` to the nearest of these levels, so an output has at most
    # two formats x these many converted copies, however many qualities are asked for.
    conversion_qualities: Annotated[list[int], NoDecode] = [50, 70, 85, 95]
    # Time limit of fetching an image param given as a URL (the whole download).
    url_fetch_timeout_seconds: float = Field(default=20.0, gt=0)
    # Days outputs and uploads are kept; 0 keeps them forever.
    retention_days: float = Field(default=0, ge=0)
    # How often the retention loop looks for expired files.
    retention_check_seconds: float = Field(default=3600.0, gt=0)

    # --- storage backend (outputs and uploads) ---------------------------------------------
    # `local`: files under GATEWAY_STORAGE_DIR. `s3`: an S3-compatible bucket.
    storage_backend: Literal["local", "s3"] = "local"
    s3_endpoint_url: str | None = None  # empty: AWS itself
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_region: str | None = None
    s3_access_key_id: str | None = None  # empty: the standard AWS credential chain
    s3_secret_access_key: SecretStr | None = None
    # How outputs stored in S3 are served: `redirect` to a short-lived presigned URL, or
    # `stream` through the gateway (for buckets clients cannot reach).
    s3_serve: Literal["redirect", "stream"] = "redirect"
    s3_presign_seconds: int = Field(default=300, ge=1, le=604800)
    # Size of the parts of multipart uploads to S3 (S3's minimum is 5 MiB).
    s3_part_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)

    # --- outbound ---------------------------------------------------------------------------
    outbound_allowlist: Annotated[list[str], NoDecode] = []

    # --- webhooks ---------------------------------------------------------------------------
    # Send webhook deliveries from this process (the outbox rows are written by any replica).
    run_webhooks: bool = True
    # Each attempt's time limit (connect, send, answer).
    webhook_timeout_seconds: float = Field(default=15.0, gt=0)
    # The first attempt is made as soon as the job changes; after a failed attempt, the next waits
    # the next of these delays (seconds); past the list the last one repeats, up to webhook_max_attempts.
    webhook_retry_schedule: Annotated[list[float], NoDecode] = [5, 300, 1800, 7200, 18000, 36000]
    webhook_max_attempts: int = Field(default=10, ge=1, le=100)
    # Each delay is spread by up to this fraction either way, so receivers that came back are not
    # hit by every delayed delivery in the same second.
    webhook_retry_jitter: float = Field(default=0.2, ge=0, le=1)
    # A receiver's Retry-After is honoured up to this many seconds.
    webhook_retry_after_max_seconds: float = Field(default=3600.0, ge=0)
    # How often the sender looks for due deliveries.
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    # A delivery claimed by a sender is not sent by another one for this long (longer than an attempt).
    webhook_lease_seconds: float = Field(default=60.0, gt=0)
    # Attempts one sender makes at once, over all users; and at once for any one user, so that one
    # user's stalled receivers never take every slot.
    webhook_max_inflight: int = Field(default=128, ge=1)
    webhook_max_inflight_per_user: int = Field(default=4, ge=1)
    # After a rotation, the previous secret keeps signing (next to the new one) this long.
    webhook_secret_grace_seconds: float = Field(default=86400.0, ge=0)
    # Key that encrypts users' webhook secrets in the database. When unset, one is derived from
    # the URL signing secret; set it apart so that a database copy alone does not reveal them.
    webhook_secret_key: str | None = None
    webhook_secret_key_file: Path | None = None

    # --- events -----------------------------------------------------------------------------
    sse_ping_seconds: float = Field(default=15.0, gt=0)
    # Progress is written to the job row at most this often; live subscribers get it sooner.
    progress_persist_seconds: float = Field(default=1.0, ge=0)

    # --- live events: event log, resume, WebSocket, synchronous wait, idempotency -------------
    # Progress events sent to subscribers and logged, per job and second (the last step of a
    # node always goes out).
    progress_events_per_second: float = Field(default=4.0, gt=0, le=100)
    # The event log keeps at most this many progress events per job (status and output events
    # are always kept): a client that reconnects after longer misses only older progress.
    event_log_max_progress: int = Field(default=100, ge=1, le=100_000)
    # The key of a live connection (SSE stream, /v1/ws) is checked again this often: a revoked key
    # or a disabled user stops receiving within this time.
    live_auth_check_seconds: float = Field(default=10.0, gt=0)
    # A valid API key's user and limits are kept in process this long, so that a request needs no
    # read of them; an admin's change (revoke, disable, new limits) is seen at once on the replica
    # that made it and, on PostgreSQL, on the others as soon as it is announced; this is the bound
    # when an announcement is missed (and for CLI changes on SQLite). 0: read on every request.
    auth_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # Live connections (SSE streams and /v1/ws sockets together) one user may hold open at once,
    # counted per process; over it: 429 (SSE) or an error frame and close 1013 (/v1/ws).
    max_live_streams_per_user: int = Field(default=32, ge=1, le=100_000)
    # How often the gauge of queued and running jobs per user (gateway_jobs_active) is read from
    # the database: one grouped count each time.
    metrics_refresh_seconds: float = Field(default=5.0, gt=0)
    # /metrics names every user id and backend URL: it needs this token (or an admin key) as
    # `Authorization: Bearer`, unless made public for a port only the scraper can reach.
    metrics_token: SecretStr | None = None
    metrics_public: bool = False
    # The longest `Prefer: wait=N` honoured on POST /v1/generate.
    max_wait_seconds: int = Field(default=60, ge=0, le=60)
    # How long an Idempotency-Key is remembered.
    idempotency_ttl_seconds: int = Field(default=86400, ge=60)

    # --- the OpenAI-compatible images API and the MCP server --------------------------------
    # How long POST /v1/images/* hold the answer for their jobs; past it, an error naming the jobs.
    openai_wait_seconds: float = Field(default=120.0, gt=0, le=3600)
    # How long an MCP tool call waits for its job; past it, the call returns the job id (get_job).
    mcp_wait_seconds: float = Field(default=60.0, gt=0, le=3600)
    # An MCP tool call returns an image output up to this size inline (image content); a larger
    # one, and any other output, as a resource link (a signed URL).
    mcp_inline_image_bytes: int = Field(default=1024 * 1024, ge=0)

    # --- server -----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    # Run the dispatcher in this process. Off for an API-only replica.
    run_dispatcher: bool = True
    # PostgreSQL, several dispatching replicas: each backend is followed by one replica at a time,
    # through a lease renewed every quarter of this; a replica that dies (or loses the database)
    # has its backends taken over by the others after at most this long (plus one renewal).
    backend_lease_seconds: float = Field(default=10.0, ge=1.0, le=300.0)
    # How this replica is named in the admin view's leases (default: host:pid).
    replica_name: str | None = Field(default=None, max_length=200)
    # Serve the browser console at /console (static files; it uses the public API with the key
    # typed into it). Off for a gateway that should answer API routes only.
    console_enabled: bool = True

    @field_validator(
        "comfyui_urls",
        "outbound_allowlist",
        "raw_workflow_deny_nodes",
        "raw_workflow_allow_nodes",
        "webhook_retry_schedule",
        "conversion_qualities",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("retention_days", mode="before")
    @classmethod
    def _empty_is_forever(cls, value: object) -> object:
        # GATEWAY_RETENTION_DAYS= (empty) means keep forever, like 0.
        return 0 if isinstance(value, str) and not value.strip() else value

    @field_validator("public_base_url", mode="before")
    @classmethod
    def _public_base_url(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str) and not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", value.strip()):
            raise ValueError("an http(s) URL without query or fragment, e.g. https://gpu.example.com")
        return value.strip().rstrip("/") if isinstance(value, str) else value

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Settings:
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("GATEWAY_S3_BUCKET is required when GATEWAY_STORAGE_BACKEND=s3")
        return self

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _delays(cls, value: list[float]) -> list[float]:
        if not value or any(d < 0 for d in value):
            raise ValueError("a non-empty list of delays in seconds, none negative")
        return value

    @model_validator(mode="after")
    def _lease_outlasts_an_attempt(self) -> Settings:
        # A lease shorter than an attempt would let a second sender send the same attempt again.
        if self.webhook_lease_seconds <= self.webhook_timeout_seconds:
            raise ValueError(
                "GATEWAY_WEBHOOK_LEASE_SECONDS must be longer than GATEWAY_WEBHOOK_TIMEOUT_SECONDS"
            )
        return self

    @field_validator("conversion_qualities")
    @classmethod
    def _qualities(cls, value: list[int]) -> list[int]:
        if not value or any(not 1 <= q <= 100 for q in value):
            raise ValueError("a non-empty list of qualities, each 1..100")
        return sorted(set(value))

    @field_validator("signing_secret_file", "webhook_secret_key_file", mode="before")
    @classmethod
    def _empty_is_no_file(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Settings:
        for name in ("signing_secret", "webhook_secret_key"):
            path = getattr(self, name + "_file")
            if path is None:
                continue
            if getattr(self, name):
                raise ValueError(f"set GATEWAY_{name.upper()} or GATEWAY_{name.upper()}_FILE, not both")
            try:
                value = path.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(
                    f"GATEWAY_{name.upper()}_FILE cannot be read: {type(exc).__name__}"
                ) from None
            if not value:
                raise ValueError(f"GATEWAY_{name.upper()}_FILE is empty")
            setattr(self, name, value)
        return self

    @model_validator(mode="after")
    def _admin_key_long_enough(self) -> Settings:
        if self.admin_api_key and len(self.admin_api_key) < ADMIN_KEY_MIN_LENGTH:
            raise ValueError(
                f"GATEWAY_ADMIN_API_KEY must be at least {ADMIN_KEY_MIN_LENGTH} characters "
                "(e.g. python -c \"import secrets; print('cgw_admin_' + secrets.token_urlsafe(24))\")"
            )
        return self

    @field_validator("comfyui_urls")
    @classmethod
    def _strip_slash(cls, value: list[str]) -> list[str]:
        return [url.rstrip("/") for url in value]


@lru_cache
def get_settings() -> Settings:
    return Settings()
