"""Errors of the Comfy API v2 surface whose code is chosen where they are raised (e.g.
`missing_asset`); app/api/v2/errors.py renders them, and every other DomainError, as the v2 envelope."""

from __future__ import annotations

from typing import Any

from app.domain.errors import DomainError


class V2Error(DomainError):
    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **details: Any
    ) -> None:
        super().__init__(message, headers=headers, **details)
        self.status = status
        self.code = code
        self.title = code
