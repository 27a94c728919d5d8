"""The public JSON shape of jobs and outputs, shared by the API, live events and (later) webhooks.

The stored shape (app/db/job_events.py: what the event log keeps) has no signed URLs, which
expire; `present_*` adds them when a view is sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.db.job_events import job_snapshot, output_snapshot
from app.db.models import Job, Output
from app.domain.json_values import sanitized
from app.storage.signing import UrlSigner


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


# The tracker's progress also counts nodes (for /api/v2) and marks the start of each node with a
# progress event of its own: /v1 shows and streams only what its contract names.
V1_PROGRESS_KEYS = ("value", "max", "node")


def v1_progress(progress: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if progress is None else {k: progress[k] for k in V1_PROGRESS_KEYS if k in progress}


def v2_only(event: str, data: dict[str, Any]) -> bool:
    """A node-start progress event, which /v1 streams do not send."""
    return event == "progress" and data.get("node_start") is True


def present_output(snapshot: dict[str, Any], signer: UrlSigner) -> dict[str, Any]:
    out = {k: v for k, v in snapshot.items() if k != "job_id"}
    out["url"] = signer.url(snapshot["job_id"], snapshot["id"])
    return out


def present_job(
    snapshot: dict[str, Any], signer: UrlSigner, *, queue_position: int | None = None
) -> dict[str, Any]:
    view = {k: v for k, v in snapshot.items() if k not in ("outputs", "error", "attempts")}
    view["queue_position"] = queue_position
    view["progress"] = v1_progress(view["progress"])
    # Keys in the order of the contract's job object.
    ordered = {
        k: view[k]
        for k in (
            "id",
            "status",
            "template",
            "params",
            "priority",
            "metadata",
            "created_at",
            "started_at",
            "finished_at",
            "queue_position",
            "waiting_reason",
            "progress",
        )
    }
    ordered["outputs"] = [present_output(o, signer) for o in snapshot["outputs"]]
    ordered["error"] = snapshot["error"]
    ordered["attempts"] = snapshot["attempts"]
    # Absent from events logged before retention existed.
    ordered["outputs_expired_at"] = snapshot.get("outputs_expired_at")
    # Rows stored before requests were checked at the edge may hold what strict JSON cannot carry.
    return sanitized(ordered)


def present_event(event: str, data: dict[str, Any], signer: UrlSigner) -> dict[str, Any]:
    """The data of a logged event as subscribers get it."""
    if event == "status":
        return present_job(data, signer)
    if event == "output":
        return present_output(data, signer)
    return data


def output_view(output: Output, signer: UrlSigner) -> dict[str, Any]:
    return present_output(output_snapshot(output), signer)


def job_view(
    job: Job, outputs: list[Output], signer: UrlSigner, *, queue_position: int | None = None
) -> dict[str, Any]:
    return present_job(job_snapshot(job, outputs), signer, queue_position=queue_position)
