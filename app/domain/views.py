"""The public JSON shape of jobs and outputs, the one definition: the API's responses, the events
the log keeps and streams send, and webhook payloads are all made here.

`job_snapshot` is the shape stored in a `status` event: it has no signed URLs, which expire;
`present_*` adds them when a view is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from app.db.models import Job, Output
from app.domain.json_values import sanitized
from app.storage.signing import UrlSigner


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def job_snapshot(job: Job, outputs: Sequence[Output]) -> dict[str, Any]:
    """The job's public fields as stored in a `status` event. Output URLs are signed, and so
    expire; they are added when the event is sent (`present_job`), never stored."""
    return {
        "id": job.id,
        "status": job.status,
        "template": job.template,
        "params": job.params,
        "priority": job.priority,
        "metadata": job.meta,
        "created_at": rfc3339(job.created_at),
        "started_at": rfc3339(job.started_at),
        "finished_at": rfc3339(job.finished_at),
        "waiting_reason": job.waiting_reason,
        "progress": job.progress,
        "outputs": [output_snapshot(o) for o in outputs],
        "error": job.error,
        "attempts": job.attempts,
        # Set when retention deleted the job's output files; `outputs` is then empty.
        "outputs_expired_at": rfc3339(job.outputs_expired_at),
    }


def output_snapshot(output: Output) -> dict[str, Any]:
    return {
        "id": output.id,
        "job_id": output.job_id,
        "node_id": output.node_id,
        "kind": output.kind,
        "filename": output.filename,
        "content_type": output.content_type,
        "size": output.size,
        "sha256": output.sha256,
    }


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
