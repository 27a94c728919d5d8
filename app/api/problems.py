"""Every error is application/problem+json (RFC 9457), rendered here and only here."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.input_checks import PATH_CTX
from app.api.v2 import errors as v2_errors
from app.domain.errors import PROBLEM_BASE, DomainError
from app.domain.json_values import sanitized

log = logging.getLogger("app.api")

PROBLEM_JSON = "application/problem+json"


def problem_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    # A problem may echo what the client sent (a field name, a value): it must still encode.
    return JSONResponse(sanitized(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        if inner := (err.get("ctx") or {}).get(PATH_CTX):
            loc.append(inner)
        errors.append({"field": ".".join(loc) or "(body)", "message": err.get("msg", "invalid")})
    return errors


_TITLES = {
    404: "Not found",
    405: "Method not allowed",
    401: "Unauthorized",
    403: "Forbidden",
    413: "Payload too large",
}


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        if v2_errors.is_v2(request):
            return v2_errors.domain_response(exc)
        return problem_response(exc.status, exc.problem(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        if v2_errors.is_v2(request):
            return v2_errors.validation_response(errors)
        fields = ", ".join(sorted({e["field"] for e in errors}))
        return problem_response(
            422,
            {
                "type": PROBLEM_BASE + "validation-error",
                "title": "Invalid request",
                "status": 422,
                "detail": f"The request is not valid: {fields}.",
                "errors": errors,
            },
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if v2_errors.is_v2(request):
            return v2_errors.http_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))
        title = _TITLES.get(exc.status_code, "Error")
        return problem_response(
            exc.status_code,
            {
                "type": PROBLEM_BASE + title.lower().replace(" ", "-"),
                "title": title,
                "status": exc.status_code,
                "detail": str(exc.detail),
            },
            getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The detail stays generic: internals (paths, SQL, tracebacks) never reach a client.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        if v2_errors.is_v2(request):
            return v2_errors.envelope(
                500, "internal", "The gateway failed to handle this request; it has been logged."
            )
        return problem_response(
            500,
            {
                "type": PROBLEM_BASE + "internal",
                "title": "Internal error",
                "status": 500,
                "detail": "The gateway failed to handle this request; it has been logged.",
            },
        )
