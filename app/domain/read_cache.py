"""What the request path reads on every request but admins rarely change, kept in process.

Two such reads were the largest statements of a submit after its own writes: the API key with its
user (a join, two ORM rows: app/domain/users.py `authenticate`) and the template document (a row and
its validation into a model: app/domain/templates.py `get_document`). Both are kept here, and
forgotten:
- at once in the process that changed a key, a user or a template, after its commit (the admin
  routes call `forget_all` on the gateway's caches);
- on PostgreSQL, in every other replica when the change's NOTIFY arrives (app/db/changes.py,
  sent in the change's own transaction, relayed by app/domain/events/relay.py), and whenever the
  relay (re)connects, since announcements may have been missed meanwhile;
- in any case after `ttl` seconds (GATEWAY_AUTH_CACHE_SECONDS): the bound for a change no
  announcement reached (a lost connection, a CLI command on SQLite).

A lookup that read the database while a change committed must not store what it read: each
`forget_all` starts a new generation, and an answer is stored only under the generation its
lookup started in. Only what was found is kept: an unknown, revoked or disabled key, or a missing
template, is read every time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")

#: Entries kept at most; past it the oldest go first.
MAX_ENTRIES = 10_000


class ReadCache(Generic[V]):
    def __init__(
        self, ttl: float, *, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, V]] = {}
        self._generation = 0

    @property
    def generation(self) -> int:
        """Take before reading the database; hand to `put` with what was read."""
        return self._generation

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: str, value: V, generation: int) -> None:
        if self._ttl <= 0 or generation != self._generation:
            return
        if len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (self._clock() + self._ttl, value)

    def forget_all(self, *_: object) -> None:
        """Something changed (somewhere): nothing read before now may be used or stored.
        Takes and ignores any arguments, so that it can be a NOTIFY listener."""
        self._generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
