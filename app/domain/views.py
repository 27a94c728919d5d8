"""The public JSON shape of jobs and outputs, shared by the API, live events and (later) webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.db.models import Job, Output
from app.storage.signing import UrlSigner


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def output_view(output: Output, signer: UrlSigner) -> dict[str, Any]:
    return {
        "id": output.id,
        "node_id": output.node_id,
        "kind": output.kind,
        "filename": output.filename,
        "content_type": output.content_type,
        "size": output.size,
        "sha256": output.sha256,
        "url": signer.url(output.job_id, output.id),
    }


def job_view(
    job: Job, outputs: list[Output], signer: UrlSigner, *, queue_position: int | None = None
) -> dict[str, Any]:
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
        "queue_position": queue_position,
        "waiting_reason": job.waiting_reason,
        "progress": job.progress,
        "outputs": [output_view(o, signer) for o in outputs],
        "error": job.error,
        "attempts": job.attempts,
        # Set when retention deleted the job's output files; `outputs` is then empty.
        "outputs_expired_at": rfc3339(job.outputs_expired_at),
    }
