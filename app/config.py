"""Settings: one `Settings` object read from the environment (prefix `GATEWAY_`) and `.env`.

This module imports nothing from `app`, so every layer can depend on it.
The names of the settings are part of the public contract; every one is documented in `.env.example`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore")

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
    # A backend unreachable for this long loses its unfinished jobs to the others.
    failover_grace_seconds: float = Field(default=30.0, gt=0)
    # Each backend's /system_stats is checked this often; after this many failures in a row it
    # is marked down (no new work), socket or not, until a check succeeds again.
    health_check_seconds: float = Field(default=5.0, gt=0)
    health_failures: int = Field(default=3, ge=1, le=100)

    # --- auth -------------------------------------------------------------------------------
    admin_api_key: str | None = None
    # Secret for signing output URLs. When unset, one is generated once and kept in the database,
    # so that URLs stay valid across restarts and replicas.
    signing_secret: str | None = None
    signed_url_ttl_seconds: int = Field(default=3600, ge=10)

    # --- per-user defaults ------------------------------------------------------------------
    default_max_queued: int = Field(default=100, ge=0)
    default_max_running: int = Field(default=4, ge=0)
    default_rate_per_minute: int = Field(default=120, ge=0)
    default_jobs_per_day: int = Field(default=5000, ge=0)
    default_max_priority: int = Field(default=0, ge=0)
    default_allow_raw_workflows: bool = False

    # --- bounds -----------------------------------------------------------------------------
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_metadata_bytes: int = Field(default=16 * 1024, ge=0)

    # --- outbound ---------------------------------------------------------------------------
    outbound_allowlist: Annotated[list[str], NoDecode] = []

    # --- events -----------------------------------------------------------------------------
    sse_ping_seconds: float = Field(default=15.0, gt=0)
    # Progress is written to the job row at most this often; live subscribers get it sooner.
    progress_persist_seconds: float = Field(default=1.0, ge=0)

    # --- server -----------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    # Run the dispatcher in this process. Off for an API-only replica.
    run_dispatcher: bool = True

    @field_validator("comfyui_urls", "outbound_allowlist", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("comfyui_urls")
    @classmethod
    def _strip_slash(cls, value: list[str]) -> list[str]:
        return [url.rstrip("/") for url in value]


@lru_cache
def get_settings() -> Settings:
    return Settings()
