"""One ComfyUI backend as the dispatcher sees it: its clients, health and the prompts it holds."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.comfy.client import ComfyClient
from app.comfy.websocket import ComfyWebSocket
from app.db.leases import FENCE_KEY, Fence
from app.db.types import utcnow
from app.dispatch.capabilities import Capabilities


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """Which of a finished prompt's files are the job's: what collecting needs of the job row,
    kept from the claim so that a finished job is not read back before its files are copied."""

    id: str
    user_id: str
    output_nodes: list[Any]
    keep_temp: bool

    @classmethod
    def of(cls, job: Any) -> OutputSpec:
        return cls(job.id, job.user_id, list(job.output_nodes or ()), bool(job.keep_temp))


@dataclass(slots=True)
class InFlight:
    """A prompt handed to this backend and not finished: what the WebSocket messages are matched to."""

    job_id: str
    user_id: str
    # The job's time limit once it runs (its template's, bounded by the server's maximum).
    timeout: float | None = None
    last_progress_persist: float = 0.0
    # The last progress seen: the row's writes are coalesced, so the final transition writes it.
    progress: dict[str, Any] | None = None
    succeeded: bool = False
    # Wall-clock time by which the job must end; set when it starts running.
    deadline: float | None = None
    # Set when the deadline passed and the backend was asked to interrupt: by then (wall clock)
    # the backend must have confirmed, or it is taken for broken.
    interrupt_due: float | None = None
    # None when the flight was rebuilt without it: the job row is then read before collecting.
    outputs: OutputSpec | None = None
    # Node counts for progress (Comfy API v2): the nodes finished or served from cache, and the
    # node executing now.
    nodes_done: set[str] = field(default_factory=set)
    current_node: str | None = None
    # The UI outputs of its nodes as `executed` messages told them (what /history lists), and
    # whether every message since its `execution_start` was heard and none of its nodes came from
    # the cache: then, once it succeeded, its outputs are known without asking /history. (ComfyUI
    # announces a cached output node with `executed` only since its execution model of August
    # 2024, a month after `execution_success` appeared: for a cached node, /history is asked.)
    executed: dict[str, dict[str, Any]] = field(default_factory=dict)
    heard_all: bool = False


@dataclass(slots=True)
class Prepared:
    """A job claimed for this backend in the database, whose POST /prompt waits for a free slot."""

    job_id: str
    user_id: str
    prompt_id: str
    workflow: dict[str, Any]
    timeout: float | None = None
    # Input images to stage onto the backend before the prompt is sent (job.inputs).
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: OutputSpec | None = None


@dataclass(eq=False)
class BackendLink:
    url: str
    client_id: str
    client: ComfyClient
    ws: ComfyWebSocket
    # The row in the `backends` table (None only for links built outside the pool, in unit tests).
    backend_id: str | None = None
    # Drained by an admin: no new jobs are sent here; the ones it holds finish here.
    draining: bool = False
    # The pool's change counter when `draining` was last set from an admin call in this process:
    # a table read that began before it must not undo it (see BackendPool.sync_backends).
    draining_stamp: int = 0
    connected: bool = False
    # After a failed HTTP call, no new work until this time (monotonic), even if the socket is up.
    retry_at: float = 0.0
    last_error: str | None = None
    # Set when prompts may have been missed (socket reconnected, ambiguous submit): the dispatcher
    # then compares its in-flight prompts with the backend's /queue and /history.
    needs_reconcile: bool = True
    queue_remaining: int | None = None
    last_reconcile: float = 0.0
    # Since when (monotonic) the backend has been unreachable; None while it answers.
    down_since: float | None = None
    # Prompts given up on while it was down: if it comes back, they are removed from it.
    abandoned: set[str] = field(default_factory=set)
    object_info: dict[str, Any] | None = None
    # None until the first /object_info answer: no work is routed here before we know what it has.
    capabilities: Capabilities | None = None
    # When /object_info was last read (wall clock, for the admin view; monotonic, for the timer).
    capabilities_at: datetime | None = None
    # The digest of the capabilities recorded in the backends table (for the other replicas).
    capabilities_digest: str | None = None
    capabilities_refreshed: float = 0.0
    # The checkpoint of the last prompt sent: likely still loaded in the GPU's memory.
    last_checkpoint: str | None = None
    # Every prompt we follow on this backend, until its job's outcome is recorded.
    inflight: dict[str, InFlight] = field(default_factory=dict)
    # The prompts that occupy the backend (queued or running in ComfyUI). A prompt leaves this set
    # the moment ComfyUI is done with it, before its outputs are copied, so the next prompt can go.
    slots: set[str] = field(default_factory=set)
    # Prompts claimed in the database whose POST /prompt has not returned yet (prepared or being
    # sent): reconciliation must not call them lost.
    submitting: set[str] = field(default_factory=set)
    # Claimed ahead of need, so that when ComfyUI finishes a prompt the next one is sent without
    # waiting for the database: the GPU's queue never runs dry because the database is busy.
    prepared: deque[Prepared] = field(default_factory=deque)
    # Prompts whose outputs are being collected, so that two triggers never collect twice.
    collecting: set[str] = field(default_factory=set)

    # /system_stats checks: failures in a row, and whether the latest one answered.
    check_failures: int = 0
    last_check_ok: bool = False
    health_failures: int = 3
    # The health last observed and since when (wall clock), for the admin view.
    seen_healthy: bool | None = None
    health_since: datetime = field(default_factory=utcnow)
    # The socket, health and capability tasks of this backend: stopped when it is removed.
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    # Several dispatching replicas (PostgreSQL): the lease this replica follows the backend under
    # (its job transitions are conditional on it), and whether it still holds it now. Asked right
    # before every call that acts on the backend. Without leases: None, and always true.
    fence: Fence | None = None
    may_act: Callable[[], bool] = field(default=lambda: True)

    @property
    def healthy(self) -> bool:
        """Up while its socket is up or /system_stats answers; down after too many failed checks."""
        return (
            time.monotonic() >= self.retry_at
            and self.check_failures < self.health_failures
            and (self.connected or self.last_check_ok)
        )

    def observe_health(self) -> bool:
        """The health now; when it changed since last observed, `health_since` moves to now."""
        healthy = self.healthy
        if healthy != self.seen_healthy:
            self.seen_healthy = healthy
            self.health_since = utcnow()
        return healthy

    def missing(self, workflow: dict[str, Any]) -> list[str] | None:
        """What this backend lacks for the workflow; None while its capabilities are unknown."""
        return None if self.capabilities is None else self.capabilities.missing(workflow)

    def free_slots(self, max_inflight: int) -> int:
        return max(0, max_inflight - len(self.slots))

    def track(self, prompt_id: str, flight: InFlight) -> None:
        self.inflight[prompt_id] = flight
        self.slots.add(prompt_id)

    def prepare(self, item: Prepared, flight: InFlight) -> None:
        self.inflight[item.prompt_id] = flight
        self.submitting.add(item.prompt_id)
        self.prepared.append(item)

    def drop_prepared(self, prompt_id: str) -> bool:
        for item in self.prepared:
            if item.prompt_id == prompt_id:
                self.prepared.remove(item)
                self.submitting.discard(prompt_id)
                self.inflight.pop(prompt_id, None)
                return True
        return False

    def release(self, prompt_id: str) -> None:
        """ComfyUI no longer holds the prompt."""
        self.slots.discard(prompt_id)

    def forget(self, prompt_id: str) -> None:
        """The prompt's outcome is recorded: nothing more to follow."""
        self.slots.discard(prompt_id)
        self.inflight.pop(prompt_id, None)

    def mark_unreachable(self, error: str, retry_seconds: float) -> None:
        self.last_error = error
        self.retry_at = time.monotonic() + retry_seconds
        self.needs_reconcile = True
        if self.down_since is None:
            self.down_since = time.monotonic()

    def mark_reachable(self) -> None:
        self.retry_at = 0.0
        self.last_error = None
        self.down_since = None

    def job_of(self, prompt_id: str | None) -> InFlight | None:
        return self.inflight.get(prompt_id) if prompt_id else None

    def missed_messages(self) -> None:
        """Messages may have been lost (the socket dropped, one could not be read): the prompts
        followed now take their outputs from /history."""
        for flight in self.inflight.values():
            flight.heard_all = False

    async def aclose(self) -> None:
        await self.ws.close()
        await self.client.aclose()


def fenced_session(sessionmaker: async_sessionmaker[AsyncSession], link: BackendLink) -> AsyncSession:
    """A session for the transitions of a backend's jobs: under its lease's fence, if leased
    (each transition then commits only while the lease is still held at that generation)."""
    if link.fence is None:
        return sessionmaker()
    return sessionmaker(info={FENCE_KEY: link.fence})


def time_limit(job: Any, max_seconds: float) -> float:
    """A job's time limit once it runs: its own (from its template), bounded by the server's."""
    return min(job.timeout_seconds, max_seconds) if job.timeout_seconds else max_seconds
