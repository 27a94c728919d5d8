"""The public JSON shape of jobs and outputs, the one definition: the API's responses, the events
the log keeps and streams send, and webhook payloads are all made here.

`job_snapshot` is the shape stored in a `status` event: it has no signed URLs, which expire;
`present_*` adds them when a view is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.db.models import Job, JobStatus, Output
from app.domain.json_values import sanitized
from app.storage.signing import UrlSigner

# ---- the shape (what /openapi.json documents; the order of its fields is the order of the JSON) ----


class Progress(BaseModel):
    # ComfyUI counts steps in integers; a node may report fractions. Whole numbers stay integers.
    value: int | float
    max: int | float
    node: str | None = None


class OutputOut(BaseModel):
    id: str
    node_id: str
    kind: str = Field(description="The key ComfyUI listed it under: images, gifs, audio, text, ...")
    filename: str
    content_type: str
    size: int
    sha256: str
    url: str


class JobError(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="`invalid_workflow` (ComfyUI refused the graph; `node_errors` says why), `execution_error` "
        "(a node failed), `timeout` (the job's deadline passed), `backend_lost` (its backends kept losing it; "
        "attempts exhausted), `interrupted` (interrupted on its backend by someone else), `output_missing` "
        "(ComfyUI listed an output it did not serve), `unsupported_workflow` (no registered backend has the "
        "nodes or models it needs; `missing` lists them), `input_missing` (an input image was deleted before it "
        "ran), `staging_failed` (the backend refused an input image), `output_too_large` (its outputs came to more "
        "than GATEWAY_MAX_JOB_OUTPUT_BYTES; none were kept), `internal_error` (the gateway hit an unexpected "
        "error while handling this job; the message is generic, the server log has the details)."
    )
    message: str
    node_id: str | None = None
    node_type: str | None = None


class JobOut(BaseModel):
    id: str
    status: JobStatus
    template: str | None
    params: dict[str, Any]
    priority: int
    metadata: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None
    queue_position: int | None = Field(
        description="Queued jobs that will start before this one (those already on a backend first, then by "
        "priority and age), counted up to 1000: a job further back reads 1000. Null once it runs."
    )
    waiting_reason: str | None = Field(
        default=None,
        description="Why a queued job is not dispatched yet, e.g. no healthy backend has a node it needs.",
    )
    progress: Progress | None
    outputs: list[OutputOut]
    error: JobError | None
    attempts: int
    outputs_expired_at: str | None = Field(
        default=None, description="When retention deleted the job's output files (`outputs` is then empty)."
    )


JOB_FIELDS = tuple(JobOut.model_fields)


# ---- built from the row ------------------------------------------------------------------------


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
    view = {
        **snapshot,
        "queue_position": queue_position,
        "progress": v1_progress(snapshot["progress"]),
        "outputs": [present_output(o, signer) for o in snapshot["outputs"]],
        # Absent from events logged before retention existed.
        "outputs_expired_at": snapshot.get("outputs_expired_at"),
    }
    # Keys in the order of the contract's job object. Rows stored before requests were checked at
    # the edge may hold what strict JSON cannot carry.
    return sanitized({k: view[k] for k in JOB_FIELDS})


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
