"""OpenAI-shaped errors, `{"error": {"message", "type", "param", "code"}}`, on the OpenAI-compatible
routes only (every other route answers problem+json, app/api/problems.py).

The routes' own class renders whatever they raise (request validation, domain errors), so OpenAI
clients get the shape their SDKs turn into typed exceptions (404 NotFoundError, 429 RateLimitError...).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.domain.errors import DomainError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    job_ids: list[str] | None = None


class OpenAIError(BaseModel):
    """What every error of these routes answers."""

    error: OpenAIErrorBody


#: The OpenAPI `responses` of these routes.
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIError, "description": "A request field is not valid; `error.param` names it."},
    401: {"model": OpenAIError, "description": "Missing or invalid API key."},
    404: {"model": OpenAIError, "description": "No such model (`error.code` `model_not_found`)."},
    413: {"model": OpenAIError, "description": "The body is too large."},
    429: {
        "model": OpenAIError,
        "description": "Over a limit of the caller's (`error.code` names it: "
        "rate_per_minute, max_queued, jobs_per_day); `Retry-After` says when to retry.",
    },
    # Also keeps FastAPI from documenting its own 422, which these routes never answer (a bad field is 400).
    "4XX": {"model": OpenAIError, "description": "Any other client error, in the same shape."},
}


class ImagesFailed(Exception):
    """Jobs of an images request that failed, or were still running at the bound: an error that
    names them, so that nothing is lost (the jobs go on; /v1/jobs/{id} has them)."""

    def __init__(self, status: int, code: str, message: str, job_ids: list[str]) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.job_ids = status, code, message, job_ids


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    type_: str | None = None,
    headers: Mapping[str, str] | None = None,
    job_ids: list[str] | None = None,
) -> JSONResponse:
    error: dict[str, Any] = {
        "message": message,
        "type": type_ or _TYPES.get(status, "server_error"),
        "param": param,
        "code": code,
    }
    if job_ids is not None:
        error["job_ids"] = job_ids
    return JSONResponse({"error": error}, status_code=status, headers=dict(headers or {}))


def _validation_param(exc: RequestValidationError) -> tuple[str | None, str]:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    return (
        param,
        f"Invalid value for '{param}': {first.get('msg', 'invalid')}."
        if param
        else "The request body is not valid JSON.",
    )


class OpenAIRoute(APIRoute):
    """Renders what a route raises in the OpenAI error shape. `param_names` maps a template param
    named by a domain error back to the request field that set it (e.g. width -> size)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                param, message = _validation_param(exc)
                return openai_error(400, message, param=param)
            except ImagesFailed as exc:
                # Never retried by the SDKs (they retry 5xx by default): a retry would make new jobs.
                return openai_error(
                    exc.status,
                    exc.message,
                    code=exc.code,
                    type_="server_error",
                    job_ids=exc.job_ids,
                    headers={"x-should-retry": "false"},
                )
            except DomainError as exc:
                return _from_domain(request, exc)
            except StarletteHTTPException as exc:
                return openai_error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

        return handle


def _from_domain(request: Request, exc: DomainError) -> JSONResponse:
    param = None
    message = exc.detail
    names: Mapping[str, str] = getattr(request.state, "openai_param_names", {})
    errors = exc.extensions.get("errors") or []
    if errors:
        first = errors[0]
        raw = first.get("param") or first.get("field")
        if raw is not None:
            raw = str(raw)
            param = names.get(raw, raw)
            # OpenAI's errors carry one message: the first problem goes into it.
            if first.get("message") and raw not in ("model",):
                message = f"{exc.detail} ({raw}: {first['message']})"
    code = exc.extensions.get("limit") or exc.extensions.get("code")
    if exc.status == 404 and code is None:
        code = "not_found"
    # A 422 of the gateway is OpenAI's 400 (invalid_request_error), what its clients expect.
    status = 400 if exc.status == 422 else exc.status
    return openai_error(status, message, param=param, code=code, headers=exc.headers)
