"""The one check every JSON request body goes through: each field's raw value, before pydantic
converts it, must be something the gateway can store and pass on (app/domain/json_values.py).

Request models derive from `RequestModel`; a body taken as a bare object uses `JsonObject`. A
refusal is an ordinary validation error (422), and its `ctx` carries the path inside the field, which
app/api/problems.py appends to the field's name (`params.prompt`, `metadata.a.b`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from app.domain import json_values

#: The ctx member naming where inside a field the refused value is.
PATH_CTX = "json_path"


def check(value: Any, *, allow_nul: bool = False) -> Any:
    found = json_values.problem(value, allow_nul=allow_nul)
    if found is None:
        return value
    path, reason = found
    raise PydanticCustomError("json_value", "{reason}", {PATH_CTX: ".".join(str(p) for p in path), "reason": reason})


class RequestModel(BaseModel):
    """A request body's model: every field, however typed, is checked first."""

    #: Fields echoed back untouched and never sent to ComfyUI nor kept in a text column: NUL is fine there.
    nul_allowed: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        return check(value, allow_nul=info.field_name in cls.nul_allowed)


JsonObject = Annotated[dict[str, Any], BeforeValidator(check)]
