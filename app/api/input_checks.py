"""The checks every request goes through at the edge, before anything is stored.

Bodies: each field's raw value, before pydantic converts it, must be something the gateway can
store and pass on (app/domain/json_values.py). Request models derive from `RequestModel`; a body
taken as a bare object uses `JsonObject`. A refusal is an ordinary validation error (422), and its
`ctx` carries the path inside the field, which app/api/problems.py appends to the field's name
(`params.prompt`, `metadata.a.b`).

URLs: `url_params`, a dependency of every route, refuses NUL (`%00`) in path and query parameters,
which PostgreSQL cannot compare with a text column.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from fastapi.requests import HTTPConnection
from pydantic import BaseModel, BeforeValidator, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from app.domain import json_values
from app.domain.errors import ValidationFailed

#: The ctx member naming where inside a field the refused value is.
PATH_CTX = "json_path"


def check(value: Any, *, allow_nul: bool = False) -> Any:
    found = json_values.problem(value, allow_nul=allow_nul)
    if found is None:
        return value
    path, reason = found
    raise PydanticCustomError(
        "json_value", "{reason}", {PATH_CTX: ".".join(str(p) for p in path), "reason": reason}
    )


class RequestModel(BaseModel):
    """A request body's model: every field, however typed, is checked first."""

    #: Fields echoed back untouched and never sent to ComfyUI nor kept in a text column: NUL is fine there.
    nul_allowed: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        return check(value, allow_nul=info.field_name in cls.nul_allowed)


JsonObject = Annotated[dict[str, Any], BeforeValidator(check)]


async def url_params(connection: HTTPConnection) -> None:
    scope = connection.scope
    if scope["type"] != "http":
        return  # WebSocket handshakes answer with frames of their own (app/api/events_ws.py)
    # Nearly every request has no NUL at all: settled from the raw bytes, nothing parsed.
    if (
        b"%00" not in scope.get("query_string", b"")
        and b"\x00" not in scope.get("query_string", b"")
        and "\x00" not in scope["path"]
    ):
        return
    bad = [
        name for name, value in connection.path_params.items() if isinstance(value, str) and "\x00" in value
    ]
    bad += [name for name, value in connection.query_params.multi_items() if "\x00" in name + value]
    if bad:
        names = sorted(set(bad))
        raise ValidationFailed(
            f"The request is not valid: {', '.join(names)}.",
            errors=[{"field": name, "message": "contains a NUL character"} for name in names],
        )
