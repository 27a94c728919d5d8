"""Job rules: accepting a generate request, reading and cancelling jobs.

Nothing here talks to ComfyUI: a request becomes a row; the dispatcher does the rest.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import jobs as repo

# The statuses, for callers above the database layer (one definition: app/db/models.py).
from app.db.models import ACTIVE as ACTIVE
from app.db.models import JOB_STATUSES, Job, Output
from app.db.models import TERMINAL as TERMINAL
from app.domain import staged_inputs, uploads
from app.domain.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.domain.pages import after_cursor
from app.domain.quotas import check_job_quotas
from app.domain.read_cache import ReadCache
from app.domain.staged_inputs import StagedInput
from app.domain.templates import get_document
from app.domain.transitions import created, mark_canceled
from app.domain.uploads import UrlFetcher, resolve_images
from app.domain.users import Principal
from app.domain.views import job_view
from app.domain.workflows import check_raw_workflow, upload_refs
from app.storage.base import Storage
from app.storage.signing import UrlSigner
from app.templates import ParamsInvalid, TemplateDocument, output_nodes, render, resolve_params


@dataclass(frozen=True, slots=True)
class GenerateInput:
    template: str | None
    workflow: dict[str, Any] | None
    params: dict[str, Any]
    priority: int
    metadata: dict[str, Any]
    # The caller's own time limit for this job; it can only shorten the template's.
    timeout_seconds: float | None = None
    # A checked webhook (app/domain/webhooks.py `accept`): URL and events.
    webhook: tuple[str, list[str]] | None = None


def _check_string_lengths(doc: Any, params: dict[str, Any], cap: int) -> None:
    """The gateway's own bound on string params (GATEWAY_MAX_PARAM_STRING_LENGTH), whatever the
    template allows (image references have their own bound); a template's maxLength is checked with
    the other params."""
    errors = [
        {
            "param": name,
            "message": f"must be at most {cap} characters long (this gateway's limit), got {len(value)}",
        }
        for name, value in params.items()
        if isinstance(value, str)
        and name in doc.params
        and doc.params[name].type == "string"
        and len(value) > cap
    ]
    if errors:
        raise ValidationFailed(
            "Some params are too long: " + ", ".join(e["param"] for e in errors) + ".", errors=errors
        )


async def _raw_inputs(
    session: AsyncSession, principal: Principal, refs: list[tuple[str, str, str]]
) -> list[dict[str, Any]]:
    """The inputs to stage for a raw workflow's `upload:<id>` references (each the caller's own)."""
    inputs = []
    for node_id, input_name, upload_id in refs:
        try:
            upload = await uploads.get_owned(session, principal.user_id, upload_id)
        except NotFound:
            field = f"workflow.{node_id}.inputs.{input_name}"
            raise ValidationFailed(
                f"{field} names no upload of yours.",
                errors=[{"field": field, "node_id": node_id, "message": "unknown upload"}],
            ) from None
        inputs.append(StagedInput.of(f"{node_id}_{input_name}", upload, [(node_id, input_name)]))
    return staged_inputs.stored(inputs)


class _Graph(NamedTuple):
    """What a request renders to: the workflow to run and what goes with it on the job."""

    workflow: dict[str, Any]
    params: dict[str, Any]
    output_nodes: list[str]
    inputs: list[dict[str, Any]]
    timeout_seconds: float | None
    keep_temp: bool


async def build(
    session: AsyncSession,
    principal: Principal,
    req: GenerateInput,
    settings: Settings,
    *,
    object_info: Mapping[str, Any] | None = None,
    storage: Storage | None = None,
    new_uploads: list[Any] | None = None,
    fetch_url: UrlFetcher | None = None,
    documents: ReadCache[TemplateDocument] | None = None,
) -> Job:
    """Validate a generate request and make its job (not yet added: see `enqueue`).
    `object_info` (a backend's node definitions) sharpens the checks of raw workflows and tells
    which nodes of a template are output nodes.
    Image params given as data: URIs or URLs are stored as the caller's uploads in `storage`
    (appended to `new_uploads`: the caller adds them with the job, or deletes their files).
    `documents`: the process's cache of template documents (app/domain/read_cache.py)."""
    priority = _check_request(principal, req, settings)
    if req.template is not None:
        graph = await _from_template(
            session,
            principal,
            req,
            req.template,
            settings,
            object_info,
            storage,
            new_uploads,
            fetch_url,
            documents,
        )
    else:
        assert req.workflow is not None
        graph = await _from_raw_workflow(session, principal, req, req.workflow, settings, object_info)
    return Job(
        id=str(uuid.uuid4()),
        user_id=principal.user_id,
        status="queued",
        template=req.template,
        params=graph.params,
        workflow=graph.workflow,
        output_nodes=graph.output_nodes,
        inputs=graph.inputs,
        keep_temp=graph.keep_temp,
        priority=priority,
        meta=req.metadata,
        attempts=0,
        cancel_requested=False,
        timeout_seconds=min(limits)
        if (limits := [t for t in (graph.timeout_seconds, req.timeout_seconds) if t])
        else None,
        webhook_url=req.webhook[0] if req.webhook else None,
        webhook_events=req.webhook[1] if req.webhook else None,
    )


def _check_request(principal: Principal, req: GenerateInput, settings: Settings) -> int:
    """The checks that need no template or graph; returns the priority the job gets."""
    if (req.template is None) == (req.workflow is None):
        raise ValidationFailed(
            "Send either 'template' (with 'params') or 'workflow', not both and not neither.",
            errors=[{"field": "template", "message": "exactly one of template or workflow is required"}],
        )
    # The contract caps a priority at the user's own maximum (the job shows what it got).
    priority = (
        req.priority
        if principal.unlimited
        else min(req.priority, int(principal.limits.get("max_priority", 0)))
    )
    if len(json.dumps(req.metadata, separators=(",", ":"))) > settings.max_metadata_bytes:
        raise ValidationFailed(
            f"metadata is larger than {settings.max_metadata_bytes} bytes.",
            errors=[{"field": "metadata", "message": "too large"}],
        )
    if req.timeout_seconds is not None and req.timeout_seconds > settings.max_job_seconds:
        raise ValidationFailed(
            f"timeout_seconds is above this server's maximum of {settings.max_job_seconds:g} s.",
            errors=[{"field": "timeout_seconds", "message": f"at most {settings.max_job_seconds:g}"}],
        )
    return priority


def _resolved(doc: TemplateDocument, params: dict[str, Any], template: str) -> dict[str, Any]:
    """The request's params checked against the template's, with defaults filled in."""
    try:
        return resolve_params(doc, params)
    except ParamsInvalid as exc:
        named = ", ".join(sorted({str(e["param"]) for e in exc.errors if e.get("param")}))
        raise ValidationFailed(
            f"Some params are not valid for template {template!r}: {named}.", errors=exc.errors
        ) from None


async def _from_template(
    session: AsyncSession,
    principal: Principal,
    req: GenerateInput,
    template: str,
    settings: Settings,
    object_info: Mapping[str, Any] | None,
    storage: Storage | None,
    new_uploads: list[Any] | None,
    fetch_url: UrlFetcher | None,
    documents: ReadCache[TemplateDocument] | None = None,
) -> _Graph:
    """A template rendered with the request's params (image params stored as the caller's uploads)."""
    try:
        doc = await get_document(session, template, documents)
    except NotFound as exc:
        raise ValidationFailed(
            exc.detail, errors=[{"field": "template", "message": "no such template"}]
        ) from None
    _check_string_lengths(doc, req.params, settings.max_param_string_length)
    resolved = _resolved(doc, req.params, template)
    inputs: list[dict[str, Any]] = []
    image_params = {
        name: (spec.binds(), spec.mask_of) for name, spec in doc.params.items() if spec.type == "image"
    }
    if image_params and any(name in resolved for name in image_params):
        if storage is None:
            raise ValidationFailed(
                "Image params are not accepted here.",
                errors=[{"field": "params", "message": "no storage"}],
            )
        inputs = await resolve_images(
            session,
            storage,
            settings,
            principal.user_id,
            image_params,
            resolved,
            new_uploads if new_uploads is not None else [],
            fetch_url,
        )
    # A backend's node definitions say which custom nodes are output nodes too (e.g. a video
    # combiner): without them only the stock output classes would be collected.
    return _Graph(
        workflow=render(doc, resolved),
        params=resolved,
        output_nodes=output_nodes(doc, object_info),
        inputs=inputs,
        timeout_seconds=doc.timeout_seconds,
        keep_temp=doc.keep_temp,
    )


async def _from_raw_workflow(
    session: AsyncSession,
    principal: Principal,
    req: GenerateInput,
    workflow: dict[str, Any],
    settings: Settings,
    object_info: Mapping[str, Any] | None,
) -> _Graph:
    """A raw workflow, checked, with its `upload:<id>` references staged (if the account may send one)."""
    if not (principal.unlimited or principal.is_admin or principal.limits.get("allow_raw_workflows")):
        raise Forbidden("Your account may not send raw workflows; use a template.")
    if req.params:
        raise ValidationFailed(
            "'params' go with a template, not a raw workflow.",
            errors=[{"field": "params", "message": "not allowed with workflow"}],
        )
    nodes = check_raw_workflow(workflow, settings, object_info)
    inputs = await _raw_inputs(session, principal, upload_refs(workflow, object_info))
    return _Graph(
        workflow=workflow,
        params={},
        output_nodes=nodes,
        inputs=inputs,
        timeout_seconds=None,
        keep_temp=False,
    )


async def enqueue(session: AsyncSession, principal: Principal, job: Job) -> Job:
    """Check the user's job quotas and insert the job (the caller commits; `job` stays out of the
    session); over a quota: LimitExceeded, and nothing is inserted. Call in the transaction that spent the request's token
    (see app/domain/quotas.py for why)."""
    await check_job_quotas(session, principal)
    # The row, and its first event (`queued`): a /v1/ws subscriber hears of the new job.
    await created(session, job)
    return job


async def get_owned(session: AsyncSession, principal: Principal, job_id: str, *, fresh: bool = False) -> Job:
    """`fresh`: read the row again even if the session holds it."""
    # Another user's job answers exactly like a missing one, for admins too: they have /v1/admin/jobs.
    job = await repo.get_job(session, job_id, user_id=principal.user_id, fresh=fresh)
    if job is None:
        raise NotFound(f"There is no job {job_id!r}.")
    return job


async def get_any(session: AsyncSession, job_id: str, *, fresh: bool = False) -> Job:
    """Any user's job: for the admin routes only."""
    job = await repo.get_job(session, job_id, fresh=fresh)
    if job is None:
        raise NotFound(f"There is no job {job_id!r}.")
    return job


async def outputs_for(session: AsyncSession, job_ids: list[str]) -> dict[str, list[Output]]:
    """Each job's outputs, in the order they were stored."""
    return await repo.outputs_for(session, job_ids)


async def queue_position(session: AsyncSession, job: Job) -> int | None:
    """How many jobs run or wait ahead of a queued one (capped); None once it left the queue."""
    return await repo.queue_position(session, job)


async def find_output(session: AsyncSession, job_id: str, output_id: str, *, user_id: str | None) -> Output:
    """An output of a job (only of `user_id`'s jobs, unless None: a signed URL names it); NotFound."""
    output = await repo.get_output(session, job_id, output_id, user_id=user_id)
    if output is None:
        raise NotFound(f"There is no output {output_id!r} of job {job_id!r}.")
    return output


async def labeled_page(
    session: AsyncSession, user_id: str, labels: dict[str, str], *, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """A page of the user's jobs carrying each of `labels` in their metadata, newest first."""
    return await repo.list_with_labels(session, user_id, labels, limit=limit, after=after_cursor(cursor))


async def load_workflow(session: AsyncSession, job: Job) -> None:
    """Load the job's (deferred) graph onto the row if it is not there yet."""
    await repo.load_workflow(session, job)


async def find_with_workflow(
    session: AsyncSession, user_id: str, job_id: str, *, fresh: bool = False
) -> Job | None:
    """A user's job with its (deferred) graph loaded, or None."""
    return await repo.get_job(session, job_id, user_id=user_id, fresh=fresh, with_workflow=True)


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
    with_owner: bool = False,
) -> dict[str, Any]:
    """A page of jobs, newest first: one user's, or everyone's (`user_id=None`, for admins, who also
    see each job's owner with `with_owner`)."""
    for status in statuses or ():
        if status not in JOB_STATUSES:
            raise ValidationFailed(
                f"Unknown status {status!r}; use one of {', '.join(JOB_STATUSES)}.",
                errors=[{"field": "status", "message": f"unknown status {status!r}"}],
            )
    after = after_cursor(cursor)
    jobs, next_cursor = await repo.list_jobs(
        session, user_id=user_id, statuses=statuses, limit=limit, after=after
    )
    outputs = await repo.outputs_for(session, [j.id for j in jobs])
    items = [
        job_view(j, outputs[j.id], signer, queue_position=await repo.queue_position(session, j)) for j in jobs
    ]
    if with_owner:
        items = [{**item, "user_id": job.user_id} for item, job in zip(items, jobs, strict=True)]
    return {"items": items, "next_cursor": next_cursor}


async def cancel(session: AsyncSession, principal: Principal, job_id: str, signer: UrlSigner) -> Job:
    return await cancel_job(session, await get_owned(session, principal, job_id), signer)


async def cancel_job(session: AsyncSession, job: Job, signer: UrlSigner) -> Job:
    """Cancel a job the caller may cancel (its owner's, or any for an admin); 409 if it has ended."""
    canceled = await mark_canceled(session, job.id)
    if canceled is None:
        await repo.reread(session, job)
        raise Conflict(
            f"The job is already {job.status}; it cannot be canceled.",
            job=await view(session, job, signer),
        )
    return canceled
