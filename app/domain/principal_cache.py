"""API key -> caller, kept in process: authenticating a request costs no database read.

Every request of a user authenticates, and reading the key with its user (a join, two ORM rows)
was the largest single statement of a submit. What it reads changes only when an admin revokes a
key or changes a user (disabled, limits, name), so the answer is kept, and forgotten:
- at once in the process that made the change, after its commit (the admin routes call `forget_all`);
- on PostgreSQL, in every other replica when the change's NOTIFY arrives (app/db/users.py
  `announce_change`, sent in the change's own transaction, relayed by app/domain/events/relay.py),
  and whenever the relay (re)connects, since announcements may have been missed meanwhile;
- in any case after `ttl` seconds (GATEWAY_AUTH_CACHE_SECONDS): the bound for a change the
  announcement did not reach (a lost connection, a CLI command on SQLite, a gateway of an older version).

A lookup that read the database while a change committed must not store what it read: each
`forget_all` starts a new generation, and an answer is stored only under the generation its
lookup started in. Only valid keys are kept: an unknown, revoked or disabled one is read every time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.domain.users import Principal

#: Entries kept at most; past it the oldest go first (each is a few hundred bytes).
MAX_ENTRIES = 10_000


class PrincipalCache:
    def __init__(
        self, ttl: float, *, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._generation = 0

    @property
    def generation(self) -> int:
        """Take before reading the database; hand to `put` with what was read."""
        return self._generation

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[digest]
            return None
        return entry[1]

    def put(self, digest: str, principal: Principal, generation: int) -> None:
        if self._ttl <= 0 or generation != self._generation:
            return
        if len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]
        self._entries[digest] = (self._clock() + self._ttl, principal)

    def forget_all(self, *_: object) -> None:
        """A key or a user changed (somewhere): nothing read before now may be used or stored.
        Takes and ignores any arguments, so that it can be a NOTIFY listener."""
        self._generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
