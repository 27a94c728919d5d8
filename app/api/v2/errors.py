"""The v2 error envelope, `{"error": {"code", "message", "details"}}`, for /api/v2 routes only
(/v1 keeps problem+json). The codes are those comfy-sdk maps to its exceptions."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from app.domain.errors import (
    Conflict,
    DomainError,
    Forbidden,
    LimitExceeded,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)
from app.domain.v2_errors import V2Error

PREFIX = "/api/v2"


def is_v2(request: Request) -> bool:
    return request.url.path == PREFIX or request.url.path.startswith(PREFIX + "/")


_CODES: list[tuple[type[DomainError], str]] = [
    (Unauthorized, "unauthorized"),
    (Forbidden, "forbidden"),
    (NotFound, "not_found"),
    (Conflict, "conflict"),
    (ValidationFailed, "invalid_request"),
    (PayloadTooLarge, "payload_too_large"),
    (ServiceUnavailable, "unavailable"),
]


def _code_of(exc: DomainError) -> str:
    if isinstance(exc, V2Error):
        return exc.code
    if isinstance(exc, LimitExceeded):
        # A full queue is the one 429 a client should simply wait out (the SDK does, on
        # `queue_full` + Retry-After); the request rate and the daily quota keep their own names.
        return {"max_queued": "queue_full", "jobs_per_day": "quota_exceeded"}.get(
            str(exc.extensions.get("limit")), "rate_limited"
        )
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return "bad_request"


def envelope(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": details or None}},
        status_code=status,
        headers=headers,
    )


def domain_response(exc: DomainError) -> JSONResponse:
    return envelope(exc.status, _code_of(exc), exc.detail, dict(exc.extensions), exc.headers)


_HTTP_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def http_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return envelope(
        status, _HTTP_CODES.get(status, "bad_request" if status < 500 else "internal"), detail, None, headers
    )


def validation_response(errors: list[dict[str, str]]) -> JSONResponse:
    fields = ", ".join(sorted({e["field"] for e in errors}))
    return envelope(422, "invalid_request", f"The request is not valid: {fields}.", {"errors": errors})
