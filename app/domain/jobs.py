"""Job rules: accepting a generate request, reading and cancelling jobs.

Nothing here talks to ComfyUI: a request becomes a row; the dispatcher does the rest.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import jobs as repo
from app.db.cursor import decode_cursor, encode_cursor
from app.db.models import Job
from app.domain.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.domain.templates import get_document
from app.domain.users import Principal
from app.domain.views import job_view
from app.storage.signing import UrlSigner
from app.templates import ParamsInvalid, output_nodes, render, resolve_params

STATUSES = ("queued", "running", "succeeded", "failed", "canceled")


@dataclass(frozen=True, slots=True)
class GenerateInput:
    template: str | None
    workflow: dict[str, Any] | None
    params: dict[str, Any]
    priority: int
    metadata: dict[str, Any]


def _check_raw_workflow(workflow: dict[str, Any]) -> list[str]:
    """The shape of a ComfyUI API-format graph; ComfyUI itself judges the rest."""
    if not workflow:
        raise ValidationFailed("The workflow is empty.", errors=[{"field": "workflow", "message": "empty"}])
    errors = []
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) or not isinstance(node.get("inputs"), dict):
            errors.append({"field": f"workflow.{node_id}", "message": "a node needs a string class_type and an inputs object"})
    if errors:
        raise ValidationFailed("The workflow is not in ComfyUI's API format.", errors=errors)
    # Which nodes are outputs is known only from the backend's object_info; an empty list means
    # "every output node", decided from ComfyUI's history when the job ends.
    return []


async def submit(session: AsyncSession, principal: Principal, req: GenerateInput, settings: Settings) -> Job:
    if (req.template is None) == (req.workflow is None):
        raise ValidationFailed(
            "Send either 'template' (with 'params') or 'workflow', not both and not neither.",
            errors=[{"field": "template", "message": "exactly one of template or workflow is required"}],
        )
    if not principal.unlimited and req.priority > principal.limits.get("max_priority", 0):
        raise ValidationFailed(
            f"Priority {req.priority} is above your maximum of {principal.limits.get('max_priority', 0)}.",
            errors=[{"field": "priority", "message": "above the user's max_priority"}],
        )
    if len(json.dumps(req.metadata, separators=(",", ":"))) > settings.max_metadata_bytes:
        raise ValidationFailed(
            f"metadata is larger than {settings.max_metadata_bytes} bytes.",
            errors=[{"field": "metadata", "message": "too large"}],
        )

    timeout_seconds: float | None = None
    if req.template is not None:
        try:
            doc = await get_document(session, req.template)
        except NotFound as exc:
            raise ValidationFailed(exc.detail, errors=[{"field": "template", "message": "no such template"}]) from None
        try:
            resolved = resolve_params(doc, req.params)
        except ParamsInvalid as exc:
            raise ValidationFailed(
                "Some params are not valid for template " + repr(req.template) + ": "
                + ", ".join(sorted({str(e["param"]) for e in exc.errors if e.get("param")})) + ".",
                errors=exc.errors,
            ) from None
        workflow = render(doc, resolved)
        nodes = output_nodes(doc)
        timeout_seconds = doc.timeout_seconds
    else:
        assert req.workflow is not None
        if not (principal.unlimited or principal.is_admin or principal.limits.get("allow_raw_workflows")):
            raise Forbidden("Your account may not send raw workflows; use a template.")
        if req.params:
            raise ValidationFailed("'params' go with a template, not a raw workflow.", errors=[{"field": "params", "message": "not allowed with workflow"}])
        nodes = _check_raw_workflow(req.workflow)
        workflow, resolved = req.workflow, {}

    job = Job(
        id=str(uuid.uuid4()),
        user_id=principal.user_id,
        status="queued",
        template=req.template,
        params=resolved,
        workflow=workflow,
        output_nodes=nodes,
        priority=req.priority,
        meta=req.metadata,
        attempts=0,
        cancel_requested=False,
        timeout_seconds=timeout_seconds,
    )
    session.add(job)
    return job


async def get_owned(session: AsyncSession, principal: Principal, job_id: str) -> Job:
    # Another user's job answers exactly like a missing one, for admins too: they have /v1/admin/jobs.
    job = await repo.get_job(session, job_id, user_id=principal.user_id)
    if job is None:
        raise NotFound(f"There is no job {job_id!r}.")
    return job


async def view(session: AsyncSession, job: Job, signer: UrlSigner, *, new: bool = False) -> dict[str, Any]:
    """The job's public view; `new` skips looking for outputs a job just created cannot have."""
    outputs = [] if new else (await repo.outputs_for(session, [job.id]))[job.id]
    return job_view(job, outputs, signer, queue_position=await repo.queue_position(session, job))


async def list_views(
    session: AsyncSession,
    signer: UrlSigner,
    *,
    user_id: str | None,
    statuses: list[str] | None,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    for status in statuses or ():
        if status not in STATUSES:
            raise ValidationFailed(
                f"Unknown status {status!r}; use one of {', '.join(STATUSES)}.",
                errors=[{"field": "status", "message": f"unknown status {status!r}"}],
            )
    after = None
    if cursor:
        after = decode_cursor(cursor)
        if after is None:
            raise ValidationFailed("The cursor is not valid.", errors=[{"field": "cursor", "message": "not a cursor from this API"}])
    jobs, more = await repo.list_jobs(session, user_id=user_id, statuses=statuses, limit=limit, after=after)
    outputs = await repo.outputs_for(session, [j.id for j in jobs])
    items = [job_view(j, outputs[j.id], signer, queue_position=await repo.queue_position(session, j)) for j in jobs]
    next_cursor = encode_cursor(jobs[-1].created_at, jobs[-1].id) if more and jobs else None
    return {"items": items, "next_cursor": next_cursor}


async def cancel(session: AsyncSession, principal: Principal, job_id: str, signer: UrlSigner) -> Job:
    job = await get_owned(session, principal, job_id)
    canceled = await repo.mark_canceled(session, job.id)
    if canceled is None:
        await session.refresh(job)
        raise Conflict(
            f"The job is already {job.status}; it cannot be canceled.",
            job=await view(session, job, signer),
        )
    return canceled
