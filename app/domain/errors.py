"""Domain errors carry their HTTP status and problem type; one handler in the api layer renders them.

No `HTTPException` is raised below the api layer.
"""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://comfy-gateway.dev/problems/"


class DomainError(Exception):
    status: int = 400
    type: str = "bad-request"
    title: str = "Bad request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    def problem(self) -> dict[str, Any]:
        return {
            "type": PROBLEM_BASE + self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extensions,
        }


class Unauthorized(DomainError):
    status, type, title = 401, "unauthorized", "Missing or invalid API key"


class Forbidden(DomainError):
    status, type, title = 403, "forbidden", "Not allowed"


class NotFound(DomainError):
    status, type, title = 404, "not-found", "Not found"


class Conflict(DomainError):
    status, type, title = 409, "conflict", "Conflict"


class QuotaExceeded(Conflict):
    # Not a 429: waiting does not help; deleting stored things does. `limit` names the setting.
    type, title = "quota-exceeded", "Storage quota exceeded"


class ValidationFailed(DomainError):
    status, type, title = 422, "validation-error", "Invalid request"


class PayloadTooLarge(DomainError):
    status, type, title = 413, "payload-too-large", "Payload too large"


class LimitExceeded(DomainError):
    status, type, title = 429, "limit-exceeded", "Limit exceeded"


class ServiceUnavailable(DomainError):
    status, type, title = 503, "unavailable", "Service unavailable"
