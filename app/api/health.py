"""Liveness, readiness, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api import deps
from app.api.operator import is_operator, require_operator
from app.api.problems import problem_response
from app.api.schemas import PROBLEMS
from app.domain import readiness
from app.domain.errors import PROBLEM_BASE, DomainError, ServiceUnavailable

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"content": {"application/problem+json": {}}}})
async def readyz(request: Request) -> Response:
    """Anyone may ask whether the gateway is ready; only an operator learns which backend is
    down or draining (their URLs are internal)."""
    state = deps.state(request)
    problems: list[str] = []
    if not await readiness.database_answers(state.sessionmaker):
        problems.append("the database does not answer")
    # A loop that died (and is being restarted, or gave up) does work nothing else does.
    stopped = [h.name for h in (loop.health for loop in state.loops) if not h.ok]
    if stopped:
        problems.append("background loops not running: " + ", ".join(stopped))
    await state.dispatcher.probe_health()
    backends = state.dispatcher.backend_health()
    # A drained backend is not down, but it takes no new jobs: with only drained ones healthy,
    # queued work would wait, so the gateway is not ready.
    draining = state.dispatcher.draining()
    detail = await is_operator(request)
    if not any(backends.values()):
        down = ", ".join(backends) or "none configured"
        problems.append(
            f"no ComfyUI backend is healthy ({down})" if detail else "no ComfyUI backend is healthy"
        )
    elif not any(healthy for url, healthy in backends.items() if url not in draining):
        problems.append(
            f"every healthy ComfyUI backend is draining ({', '.join(draining)})"
            if detail
            else "every healthy ComfyUI backend is draining"
        )
    extra = {"backends": backends, "draining": draining} if detail else {}
    healthy = sum(1 for ok in backends.values() if ok)
    if problems:
        return problem_response(
            503,
            {
                "type": PROBLEM_BASE + "not-ready",
                "title": "Not ready",
                "status": 503,
                "detail": "; ".join(problems) + ".",
                "backends_healthy": healthy,
                **extra,
            },
        )
    return JSONResponse({"status": "ready", "backends_healthy": healthy, **extra})


@router.get("/metrics", include_in_schema=True, responses={code: PROBLEMS[code] for code in (401, 403)})
async def metrics(request: Request) -> Response:
    """Prometheus text. Needs `Authorization: Bearer` with GATEWAY_METRICS_TOKEN or an admin key,
    unless GATEWAY_METRICS_PUBLIC is true (a deployment whose port only the scraper reaches)."""
    if not deps.state(request).settings.metrics_public:
        try:
            await require_operator(request)
        except DomainError:
            raise
        except Exception as exc:  # the database answers no key: not a 500
            raise ServiceUnavailable("The database does not answer; an admin key cannot be checked.") from exc
    return Response(generate_latest(deps.state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
