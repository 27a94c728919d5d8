"""Admin routes: users, their keys and limits, and every user's jobs. A non-admin key gets 403."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.api import deps
from app.api.deps import AdminDep, SessionDep, SettingsDep, SignerDep, StorageDep
from app.api.pages import Cursor, Limit
from app.api.schemas import (
    PROBLEMS,
    AdminJobList,
    AdminJobOut,
    KeyCreate,
    KeyCreated,
    KeyList,
    UserCreate,
    UserList,
    UserOut,
    UserPatch,
    WebhookDeliveryList,
    WebhookDeliveryOut,
)
from app.domain import jobs, transitions, users, webhooks
from app.domain.retention import purge_job
from app.domain.views import rfc3339

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post("/users", status_code=201, response_model=UserOut, responses=PROBLEMS)
async def create_user(body: UserCreate, session: SessionDep, settings: SettingsDep, admin: AdminDep) -> dict:
    user = await users.create_user(
        session, name=body.name, is_admin=body.is_admin, limits=body.limits.model_dump(exclude_none=True)
    )
    await session.commit()
    return users.user_view(user, settings)


@router.get("/users", response_model=UserList, responses=PROBLEMS)
async def list_users(
    session: SessionDep, settings: SettingsDep, admin: AdminDep, limit: Limit = 20, cursor: Cursor = None
) -> dict:
    rows, next_cursor = await users.list_users(session, limit=limit, cursor=cursor)
    return {"items": [users.user_view(u, settings) for u in rows], "next_cursor": next_cursor}


@router.get("/users/{user_id}", response_model=UserOut, responses=PROBLEMS)
async def get_user(user_id: str, session: SessionDep, settings: SettingsDep, admin: AdminDep) -> dict:
    return users.user_view(await users.get_user(session, user_id), settings)


@router.patch("/users/{user_id}", response_model=UserOut, responses=PROBLEMS)
async def update_user(
    user_id: str,
    body: UserPatch,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    admin: AdminDep,
) -> dict:
    user = await users.update_user(
        session,
        user_id,
        name=body.name,
        disabled=body.disabled,
        # Only the members sent: a member sent as null goes back to the default.
        limit_changes=body.limits.model_dump(exclude_unset=True) if body.limits is not None else None,
    )
    await session.commit()
    # After the commit, never before: a request reading the user meanwhile would cache the old row.
    deps.state(request).forget_cached()
    return users.user_view(user, settings)


@router.post("/users/{user_id}/keys", status_code=201, response_model=KeyCreated, responses=PROBLEMS)
async def create_key(
    user_id: str, session: SessionDep, admin: AdminDep, body: KeyCreate | None = None
) -> dict:
    user = await users.get_user(session, user_id)
    row, secret = await users.create_key(session, user, name=body.name if body else None)
    await session.commit()
    return {"id": row.id, "name": row.name, "key": secret, "created_at": rfc3339(row.created_at)}


@router.get("/users/{user_id}/keys", response_model=KeyList, responses=PROBLEMS)
async def list_keys(
    user_id: str, session: SessionDep, admin: AdminDep, limit: Limit = 20, cursor: Cursor = None
) -> dict:
    rows, next_cursor = await users.list_keys(session, user_id, limit=limit, cursor=cursor)
    return {"items": [users.key_view(k) for k in rows], "next_cursor": next_cursor}


@router.delete("/users/{user_id}/keys/{key_id}", status_code=204, responses=PROBLEMS)
async def revoke_key(
    user_id: str, key_id: str, request: Request, session: SessionDep, admin: AdminDep
) -> Response:
    await users.revoke_key(session, user_id, key_id)
    await session.commit()
    deps.state(request).forget_cached()  # after the commit (see update_user)
    return Response(status_code=204)


@router.get("/jobs", response_model=AdminJobList, responses=PROBLEMS)
async def list_all_jobs(
    session: SessionDep,
    signer: SignerDep,
    admin: AdminDep,
    status: Annotated[
        list[str] | None, Query(description="Filter by status; repeat or comma-separate.")
    ] = None,
    user_id: Annotated[str | None, Query(max_length=36, description="Only this user's jobs.")] = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> dict:
    statuses = [s for value in status or () for s in value.split(",") if s] or None
    return await jobs.list_views(
        session, signer, user_id=user_id, statuses=statuses, limit=limit, cursor=cursor, with_owner=True
    )


@router.get("/jobs/{job_id}", response_model=AdminJobOut, responses=PROBLEMS, summary="Any user's job")
async def get_any_job(job_id: str, session: SessionDep, signer: SignerDep, admin: AdminDep) -> dict:
    """The owner's `GET /v1/jobs/{id}`, for any user's job, with its owner's `user_id`."""
    job = await jobs.get_any(session, job_id)
    return {**await jobs.view(session, job, signer), "user_id": job.user_id}


@router.get(
    "/jobs/{job_id}/webhook-deliveries",
    response_model=WebhookDeliveryList,
    responses=PROBLEMS,
    summary="Any user's job's webhook deliveries",
)
async def list_any_webhook_deliveries(
    job_id: str, session: SessionDep, admin: AdminDep, limit: Limit = 20, cursor: Cursor = None
) -> dict:
    """The owner's `GET /v1/jobs/{id}/webhook-deliveries`, for any user's job (to redeliver one)."""
    job = await jobs.get_any(session, job_id)
    return await webhooks.deliveries_view(session, job.id, limit=limit, cursor=cursor)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=AdminJobOut,
    responses=PROBLEMS,
    summary="Cancel any user's job",
)
async def cancel_any_job(
    job_id: str, request: Request, session: SessionDep, signer: SignerDep, admin: AdminDep
) -> dict:
    """The owner's `POST /v1/jobs/{id}/cancel`, for any user's job: a queued job leaves every queue, a
    running one is interrupted on its backend; 200 with the job, now `canceled`; 409 (with the job
    in `job`) if it had already ended; 404 if there is no such job."""
    job = await jobs.cancel_job(session, await jobs.get_any(session, job_id), signer)
    await session.commit()
    view = {**await jobs.view(session, job, signer), "user_id": job.user_id}
    await deps.state(request).dispatcher.job_canceled(job)
    return view


@router.delete("/jobs/{job_id}", status_code=204, responses=PROBLEMS, summary="Delete any user's job")
async def delete_any_job(
    job_id: str, request: Request, session: SessionDep, storage: StorageDep, admin: AdminDep
) -> Response:
    """Remove any user's job, finished or not, with its outputs (and their files) and its events.
    A queued or running job is canceled first (its subscribers hear so) and taken off its backend.
    204; 404 if there is no such job."""
    job = await jobs.get_any(session, job_id)
    if job.status in jobs.ACTIVE:
        canceled = await transitions.mark_canceled(session, job.id)
        await session.commit()
        if canceled is not None:
            job = canceled
            await deps.state(request).dispatcher.job_canceled(job)
    if job.cancel_requested:
        # Once the row is gone the cleanup of cancels has nothing to find: off its backend now.
        await deps.state(request).dispatcher.take_off(job)
    prefix = await purge_job(session, job)
    await session.commit()
    await storage.delete_prefix(prefix)
    return Response(status_code=204)


@router.post(
    "/webhook-deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=WebhookDeliveryOut,
    responses=PROBLEMS,
)
async def redeliver_webhook(delivery_id: str, request: Request, session: SessionDep, admin: AdminDep) -> dict:
    """Send a delivery again now, with a fresh round of attempts (past attempts stay listed)."""
    view = await webhooks.redeliver(session, delivery_id)
    deps.state(request).webhook_sender.wake()
    return view
