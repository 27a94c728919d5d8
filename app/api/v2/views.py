"""The v2 JSON shapes of jobs, outputs and assets (comfy-sdk's models are strict: every key is
present, null where empty; timestamps carry a zone; URLs are absolute)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Request

from app.config import Settings
from app.db.models import Asset, Job, Output
from app.domain.views import output_snapshot, rfc3339
from app.storage.signing import UrlSigner

# Jobs are kept until retention deletes their outputs; with retention off they are kept for good,
# which the contract's always-present `expires_at` can only say as a date that never comes.
NEVER = datetime(9999, 12, 31, tzinfo=UTC)
# Uploaded assets are signed for the content route under this pseudo job id (outputs under their
# job's): a job id is a UUID, so such a signature never opens a /v1 output.
ASSET_SIGNING_SCOPE = "asset"

_KINDS = {
    "images": "image",
    "gifs": "video",
    "videos": "video",
    "video": "video",
    "audio": "audio",
    "text": "text",
    "latents": "latent",
}


def base_url(request: Request, settings: Settings) -> str:
    """Where clients reach the gateway: GATEWAY_PUBLIC_BASE_URL, else the request's own origin."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    return str(request.base_url).rstrip("/")


def status_of(status: str, outputs_expired: bool) -> str:
    if status == "succeeded" and outputs_expired:
        return "expired"
    return status


def _output_type(kind: str, content_type: str) -> str:
    if kind in _KINDS:
        return _KINDS[kind]
    major = content_type.split("/", 1)[0]
    return {"image": "image", "video": "video", "audio": "audio", "text": "text"}.get(major, "file")


def output_view(snapshot: dict[str, Any], base: str, signer: UrlSigner) -> dict[str, Any]:
    """An output as v2 shows it, from its stored snapshot (app/domain/views.py `output_snapshot`)."""
    expires, signature = signer.sign(snapshot["job_id"], snapshot["id"])
    return {
        "id": snapshot["id"],
        "node_id": snapshot["node_id"],
        "name": snapshot["filename"],
        "type": _output_type(snapshot.get("kind", ""), snapshot["content_type"]),
        "content_type": snapshot["content_type"],
        "size_bytes": snapshot["size"],
        # Outputs are hashed with sha256 when collected; blake3 is computed for uploads only.
        "hash": None,
        "url": f"{base}/api/v2/assets/{snapshot['id']}/content?expires={expires}&signature={signature}",
        "url_expires_at": rfc3339(datetime.fromtimestamp(expires, UTC)),
        "job_id": snapshot["job_id"],
    }


def progress_view(
    progress: dict[str, Any] | None, workflow: dict[str, Any], status: str
) -> dict[str, Any] | None:
    """v2 progress from the tracker's progress dict (sampler step `value`/`max` of `node`, and the
    node counts): node-count weighted, the current node's steps filling its share."""
    total = len(workflow) or 1
    if status == "succeeded":
        return {
            "value": 1.0,
            "nodes_done": total,
            "nodes_total": total,
            "current_node": None,
            "current_node_class": None,
            "step": None,
            "steps": None,
            "message": None,
        }
    if not progress:
        return None
    done = min(int(progress.get("nodes_done") or 0), total)
    node = progress.get("current_node") or progress.get("node")
    step: Any = progress.get("value")
    steps: Any = progress.get("max")
    step_part = 0.0
    has_steps = (
        isinstance(step, int | float)
        and isinstance(steps, int | float)
        and steps > 0
        and progress.get("node") == node
        and not progress.get("node_start")
    )
    if has_steps:
        step_part = min(max(float(step) / float(steps), 0.0), 1.0)
    value = min(max((done + step_part) / total, 0.0), 1.0)
    cls = (
        workflow.get(node, {}).get("class_type")
        if isinstance(node, str) and isinstance(workflow.get(node), dict)
        else None
    )
    return {
        "value": value,
        "nodes_done": done,
        "nodes_total": total,
        "current_node": node if isinstance(node, str) else None,
        "current_node_class": cls,
        "step": int(step) if has_steps else None,
        "steps": int(steps) if has_steps else None,
        "message": f"{cls} {int(step)}/{int(steps)}" if has_steps and cls else None,
    }


def _error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    if not error:
        return None
    return {
        "code": str(error.get("type") or "execution_error"),
        "message": str(error.get("message") or ""),
        "node_id": error.get("node_id"),
        "class_type": error.get("node_type"),
        # Never sent: a traceback carries server paths.
        "traceback": None,
    }


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    return None if start is None or end is None else int((end - start).total_seconds() * 1000)


def expires_at(job: Job, settings: Settings) -> str:
    if not settings.retention_days:
        return rfc3339(NEVER) or ""
    return rfc3339((job.finished_at or datetime.now(UTC)) + timedelta(days=settings.retention_days)) or ""


def job_urls(base: str, job_id: str) -> dict[str, str]:
    root = f"{base}/api/v2/jobs/{job_id}"
    return {"self": root, "events": f"{root}/events", "cancel": f"{root}/cancel"}


def labels(meta: Any) -> dict[str, str]:
    return {k: v for k, v in meta.items() if isinstance(v, str)} if isinstance(meta, dict) else {}


def job_view(
    job: Job,
    outputs: list[Output],
    *,
    base: str,
    signer: UrlSigner,
    settings: Settings,
    queue_position: int | None,
) -> dict[str, Any]:
    status = status_of(job.status, job.outputs_expired_at is not None)
    return {
        "id": job.id,
        "status": status,
        "created_at": rfc3339(job.created_at),
        "started_at": rfc3339(job.started_at),
        "completed_at": rfc3339(job.finished_at),
        "expires_at": expires_at(job, settings),
        "queue_position": queue_position,
        "progress": progress_view(job.progress, job.workflow or {}, status),
        "outputs": [output_view(output_snapshot(o), base, signer) for o in outputs],
        "error": _error(job.error) if job.status == "failed" else None,
        "metrics": {
            "queue_ms": _ms(job.created_at, job.started_at),
            "execution_ms": _ms(job.started_at, job.finished_at),
        },
        "metadata": labels(job.meta),
        "urls": job_urls(base, job.id),
    }


def summary_view(job: Job) -> dict[str, Any]:
    """A job in GET /api/v2/jobs: the light shape comfy-sdk's JobSummary reads."""
    return {
        "id": job.id,
        "status": status_of(job.status, job.outputs_expired_at is not None),
        "create_time": rfc3339(job.created_at),
        "update_time": rfc3339(job.updated_at),
        "metadata": labels(job.meta),
    }


def asset_view(
    item: Asset | Output, *, base: str, signer: UrlSigner, created_new: bool | None = None
) -> dict[str, Any]:
    if isinstance(item, Output):
        view = output_view(
            {
                "id": item.id,
                "job_id": item.job_id,
                "node_id": item.node_id,
                "kind": item.kind,
                "filename": item.filename,
                "content_type": item.content_type,
                "size": item.size,
            },
            base,
            signer,
        )
        return {
            "id": item.id,
            "hash": None,
            "size_bytes": item.size,
            "content_type": item.content_type,
            "file_path": item.filename,
            "created_new": created_new,
            "created_at": rfc3339(item.created_at),
            "url": view["url"],
            "url_expires_at": view["url_expires_at"],
            "expires_at": None,
            "job_id": item.job_id,
        }
    expires, signature = signer.sign(ASSET_SIGNING_SCOPE, item.id)
    return {
        "id": item.id,
        "hash": item.hash,
        "size_bytes": item.size,
        "content_type": item.content_type,
        "file_path": item.file_path,
        "created_new": created_new,
        "created_at": rfc3339(item.created_at),
        "url": f"{base}/api/v2/assets/{item.id}/content?expires={expires}&signature={signature}",
        "url_expires_at": rfc3339(datetime.fromtimestamp(expires, UTC)),
        # Uploaded assets are kept until their owner deletes them.
        "expires_at": None,
        "job_id": None,
    }
