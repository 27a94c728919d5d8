"""Liveness, readiness, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.problems import problem_response
from app.domain.errors import PROBLEM_BASE

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"content": {"application/problem+json": {}}}})
async def readyz(request: Request) -> Response:
    problems: list[str] = []
    try:
        async with request.app.state.sessionmaker() as session:
            await session.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any failure means "not ready", and says so
        problems.append("the database does not answer")
    await request.app.state.probe_backends()
    backends = request.app.state.backend_health()
    # A drained backend is not down, but it takes no new jobs: with only drained ones healthy,
    # queued work would wait, so the gateway is not ready.
    draining = request.app.state.backends_draining()
    if not any(backends.values()):
        down = ", ".join(backends) or "none configured"
        problems.append(f"no ComfyUI backend is healthy ({down})")
    elif not any(healthy for url, healthy in backends.items() if url not in draining):
        problems.append(f"every healthy ComfyUI backend is draining ({', '.join(draining)})")
    if problems:
        return problem_response(
            503,
            {
                "type": PROBLEM_BASE + "not-ready",
                "title": "Not ready",
                "status": 503,
                "detail": "; ".join(problems) + ".",
                "backends": backends,
                "draining": draining,
            },
        )
    return JSONResponse({"status": "ready", "backends": backends, "draining": draining})


@router.get("/metrics", include_in_schema=True)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
