"""When a webhook delivery is attempted again: a value object built from the settings."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """The first attempt is made at once; after attempt n fails, `delays[n-1]` seconds pass before
    the next; past the list the last delay repeats, up to `max_attempts` attempts in all. Each delay is spread by up to `jitter`
    (a fraction) either way, so that deliveries that failed together do not all come back together."""

    delays: tuple[float, ...]
    max_attempts: int
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not self.delays or any(d < 0 for d in self.delays):
            raise ValueError("delays must be a non-empty list of non-negative seconds")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter is a fraction between 0 and 1")

    @classmethod
    def of(cls, delays: Sequence[float], max_attempts: int, jitter: float = 0.0) -> RetrySchedule:
        return cls(tuple(float(d) for d in delays), max_attempts, jitter)

    def nominal(self, attempts_made: int) -> float | None:
        """The delay before the next attempt, without jitter; None when no attempt is left."""
        if attempts_made < 1:
            return 0.0
        if attempts_made >= self.max_attempts:
            return None
        return self.delays[min(attempts_made - 1, len(self.delays) - 1)]

    def next_delay(
        self,
        attempts_made: int,
        *,
        retry_after: float | None = None,
        retry_after_cap: float = 3600.0,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds to wait after `attempts_made` attempts failed; None: give up.

        A receiver's Retry-After (seconds) is honoured, bounded by `retry_after_cap`: the delay is
        never shorter than what the receiver asked, nor than the schedule's."""
        base = self.nominal(attempts_made)
        if base is None:
            return None
        if self.jitter and base:
            base *= (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        if retry_after is not None:
            base = max(base, min(max(retry_after, 0.0), retry_after_cap))
        return base
