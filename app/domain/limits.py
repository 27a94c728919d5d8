"""Per-user limits: their names, types and ranges, and how a user's own values meet the defaults.

A user's row keeps only the limits set for it (`users.limits`); every other member falls back to
the deployment's default (`GATEWAY_DEFAULT_<NAME>`), so changing a default reaches every user who
has not been given a value of their own.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from app.config import LIMIT_RANGES, Settings

LIMIT_NAMES = (
    "max_queued",
    "max_running",
    "rate_per_minute",
    "jobs_per_day",
    "max_priority",
    "allow_raw_workflows",
    "weight",
)


class Limits(BaseModel):
    """A user's own limits. Each member is optional: absent (or null) means the deployment's default.

    The ranges are the settings' (app/config.py LIMIT_RANGES). None may be 0: to stop a user, disable it.
    """

    model_config = ConfigDict(extra="forbid")

    max_queued: Annotated[
        StrictInt | None,
        Field(
            **LIMIT_RANGES["max_queued"], description="Most jobs waiting to run at once (429 `max_queued`)."
        ),
    ] = None
    max_running: Annotated[
        StrictInt | None,
        Field(**LIMIT_RANGES["max_running"], description="Most jobs running at once, over all backends."),
    ] = None
    rate_per_minute: Annotated[
        StrictInt | None,
        Field(
            **LIMIT_RANGES["rate_per_minute"],
            description="Requests a minute on any route, and the burst (429 `rate_per_minute`).",
        ),
    ] = None
    jobs_per_day: Annotated[
        StrictInt | None,
        Field(
            **LIMIT_RANGES["jobs_per_day"], description="Jobs created in any 24 hours (429 `jobs_per_day`)."
        ),
    ] = None
    max_priority: Annotated[
        StrictInt | None,
        Field(
            **LIMIT_RANGES["max_priority"],
            description="Highest `priority` the user's jobs get; a higher one asked for is capped at it.",
        ),
    ] = None
    allow_raw_workflows: Annotated[
        StrictBool | None, Field(description="May send `workflow` (a ComfyUI graph) instead of a template.")
    ] = None
    weight: Annotated[
        StrictInt | None,
        Field(
            **LIMIT_RANGES["weight"],
            description="The user's share in fair scheduling, relative to other users with work.",
        ),
    ] = None


def defaults(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, f"default_{name}") for name in LIMIT_NAMES}


def effective(own: dict[str, Any] | None, settings: Settings) -> dict[str, Any]:
    """Every limit: the user's own value where it has one, else the default."""
    return {
        **defaults(settings),
        **{k: v for k, v in (own or {}).items() if k in LIMIT_NAMES and v is not None},
    }


def merged(own: dict[str, Any] | None, changes: dict[str, Any]) -> dict[str, Any]:
    """The user's own limits after a PATCH: a member set to null goes back to the default."""
    result = {k: v for k, v in (own or {}).items() if k in LIMIT_NAMES and v is not None}
    for name, value in changes.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result
