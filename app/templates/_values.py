"""Value checks shared by the document model (defaults, enums) and by params resolution.

Every function returns human-readable problems instead of raising, so callers can gather all of
them at once.
"""

from __future__ import annotations

import decimal
import math
from typing import Any

PARAM_TYPES: tuple[str, ...] = ("string", "integer", "number", "boolean", "image")

#: Longest accepted value of an ``image`` param (an upload id, a URL or a data URI), in characters.
MAX_IMAGE_REF_LENGTH = 2 * 1024 * 1024

#: Random seeds are drawn from [0, RANDOM_SEED_LIMIT): every such integer is exact in a double.
RANDOM_SEED_LIMIT = 2**53

_ARTICLE = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "image": "an image reference (a non-empty string)",
}


def json_type_name(value: Any) -> str:
    """The JSON name of a Python value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def is_number(value: Any) -> bool:
    """A JSON number: int or finite float, never bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def type_problem(ptype: str, value: Any) -> str | None:
    """Why ``value`` is not of param type ``ptype``, or None if it is."""
    expected = _ARTICLE[ptype]
    if ptype == "string":
        ok = isinstance(value, str)
    elif ptype == "integer":
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return f"must be an integer, got the number {value!r} (write integers without a fractional part)"
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif ptype == "number":
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        ok = is_number(value)
    elif ptype == "boolean":
        ok = isinstance(value, bool)
    elif ptype == "image":
        if not isinstance(value, str):
            ok = False
        elif not value.strip():
            return "must be a non-empty image reference (an upload id, a URL or a data URI)"
        elif len(value) > MAX_IMAGE_REF_LENGTH:
            return (
                f"is too long for an image reference: {len(value)} characters "
                f"(at most {MAX_IMAGE_REF_LENGTH})"
            )
        else:
            ok = True
    else:  # pragma: no cover - guarded by the model
        return f"unknown param type {ptype!r}"
    if ok:
        return None
    return f"must be {expected}, got {json_type_name(value)}"


def is_multiple_of(value: int | float, step: int | float) -> bool:
    """Whether ``value`` is an exact multiple of ``step`` (> 0), in decimal terms.

    Floats are compared through their shortest decimal representation, so 0.3 is a multiple of 0.1
    (plain float division would say 2.9999999999999996 and get it wrong).
    """
    if isinstance(value, int) and isinstance(step, int):
        return value % step == 0
    try:
        with decimal.localcontext() as ctx:
            ctx.prec = 2000
            ctx.traps[decimal.Inexact] = False
            dv = decimal.Decimal(repr(value)) if isinstance(value, float) else decimal.Decimal(value)
            ds = decimal.Decimal(repr(step)) if isinstance(step, float) else decimal.Decimal(step)
            return dv % ds == 0
    except (decimal.InvalidOperation, ValueError, OverflowError):
        try:
            q = value / step
        except (OverflowError, ZeroDivisionError):
            return False
        return math.isfinite(q) and float(q).is_integer()


def _fmt(n: int | float) -> str:
    return repr(n)


def constraint_problems(
    ptype: str,
    value: Any,
    *,
    minimum: int | float | None = None,
    maximum: int | float | None = None,
    multiple_of: int | float | None = None,
    enum: list[Any] | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
) -> list[str]:
    """Problems of a value that already has the right type, against the param's keywords."""
    problems: list[str] = []
    if ptype in ("integer", "number"):
        if minimum is not None and value < minimum:
            problems.append(f"must be >= {_fmt(minimum)}, got {_fmt(value)}")
        if maximum is not None and value > maximum:
            problems.append(f"must be <= {_fmt(maximum)}, got {_fmt(value)}")
        if multiple_of is not None and not is_multiple_of(value, multiple_of):
            problems.append(f"must be a multiple of {_fmt(multiple_of)}, got {_fmt(value)}")
    if ptype == "string":
        if min_length is not None and len(value) < min_length:
            problems.append(f"must be at least {min_length} characters long, got {len(value)}")
        if max_length is not None and len(value) > max_length:
            problems.append(f"must be at most {max_length} characters long, got {len(value)}")
    if enum is not None and not any(value == e for e in enum):
        shown = value if not isinstance(value, str) or len(value) <= 80 else value[:77] + "..."
        problems.append(f"must be one of {', '.join(repr(e) for e in enum)}; got {shown!r}")
    return problems
