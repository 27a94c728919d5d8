"""The per-user cap on open live connections (SSE streams and /v1/ws sockets together).

Each open connection holds a task, a subscription queue and a socket for as long as the client
likes: without a cap one key could open thousands. Counted per process (each replica caps on its
own), in memory: a connection's slot is given back when it ends, however it ends.
"""

from __future__ import annotations

from collections import Counter

from app.domain.errors import LimitExceeded
from app.domain.users import Principal

#: Streams end when clients go, at no predictable time: a short, fixed hint.
RETRY_AFTER_SECONDS = 5


class LiveSlots:
    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._open: Counter[str] = Counter()

    def take(self, principal: Principal) -> str | None:
        """A slot for the caller (give it back with `give_back`), or LimitExceeded (429). The
        bootstrap key is not limited, as everywhere; it gets no slot (None)."""
        if principal.unlimited:
            return None
        user = principal.user_id
        if self._open[user] >= self.per_user:
            raise LimitExceeded(
                f"At most {self.per_user} live connections (event streams and /v1/ws sockets) per user are open "
                "at once; close one first.",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                limit="max_live_streams",
            )
        self._open[user] += 1
        return user

    def give_back(self, slot: str | None) -> None:
        if slot is None:
            return
        self._open[slot] -= 1
        if self._open[slot] <= 0:
            del self._open[slot]
