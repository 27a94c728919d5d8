"""Backend leases and replica heartbeats (PostgreSQL only): the statements behind
app/dispatch/leases.py, and the fence that job transitions are conditional on.

Every time here is the database's clock (`clock_timestamp()`), so replicas on hosts whose clocks
disagree still agree on who holds what. Callers commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, exists, func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import BackendLease

#: Channel on which a replica announces that leases were given back or a replica joined, so that
#: the others rebalance at once instead of at their next round.
CHANNEL = "gateway_leases"

#: `session.info` key: the fence of the backend whose transitions the session makes.
FENCE_KEY = "lease_fence"


@dataclass(frozen=True, slots=True)
class Fence:
    """What a job transition of a dispatched job must still find in the lease row to commit."""

    owner: str
    generation: int


def holds(fence: Fence, backend: Any) -> Any:
    """The fence as a condition: the lease of `backend` (a column or a value) is still this owner's,
    at this generation, and not expired. FOR SHARE locks the lease row until the transition's
    transaction ends, so a takeover (an UPDATE of that row) waits for it, and a transition that
    comes after a takeover sees the new owner and changes nothing."""
    lease = BackendLease.__table__.c
    return exists(
        select(literal(1))
        .where(
            lease.backend == backend,
            lease.owner == fence.owner,
            lease.generation == fence.generation,
            lease.expires_at > func.clock_timestamp(),
        )
        .with_for_update(read=True)
    )


_FENCE_OWNER = bindparam("p_fence_owner", type_=BackendLease.__table__.c.owner.type)
_FENCE_GENERATION = bindparam("p_fence_generation", type_=BackendLease.__table__.c.generation.type)


def holds_bound(backend: Any) -> Any:
    """`holds`, with the fence as bound parameters (`fence_params`): for statements built once."""
    lease = BackendLease.__table__.c
    return exists(
        select(literal(1))
        .where(
            lease.backend == backend,
            lease.owner == _FENCE_OWNER,
            lease.generation == _FENCE_GENERATION,
            lease.expires_at > func.clock_timestamp(),
        )
        .with_for_update(read=True)
    )


def fence_params(fence: Fence) -> dict[str, Any]:
    return {"p_fence_owner": fence.owner, "p_fence_generation": fence.generation}


@dataclass(frozen=True, slots=True)
class LeaseRow:
    backend: str
    owner: str | None
    owner_name: str | None
    generation: int
    acquired_at: datetime | None
    heartbeat_at: datetime | None
    expires_at: datetime | None
    healthy: bool
    live: bool


_TTL = "make_interval(secs => :ttl)"


async def heartbeat(session: AsyncSession, replica: str, name: str, ttl: float) -> list[str]:
    """Say this replica is alive for `ttl` more seconds; returns the live replicas' ids, sorted."""
    await session.execute(
        text(
            "INSERT INTO gateway_replicas (id, name, started_at, heartbeat_at, expires_at) "
            f"VALUES (:id, :name, clock_timestamp(), clock_timestamp(), clock_timestamp() + {_TTL}) "
            "ON CONFLICT (id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at, "
            "expires_at = EXCLUDED.expires_at"
        ),
        {"id": replica, "name": name, "ttl": ttl},
    )
    # Replicas dead for an hour are forgotten: the table does not grow with every restart.
    await session.execute(
        text("DELETE FROM gateway_replicas WHERE expires_at < clock_timestamp() - interval '1 hour'")
    )
    rows = await session.execute(
        text("SELECT id FROM gateway_replicas WHERE expires_at > clock_timestamp() ORDER BY id")
    )
    return list(rows.scalars())


async def leave(session: AsyncSession, replica: str) -> None:
    await session.execute(text("DELETE FROM gateway_replicas WHERE id = :id"), {"id": replica})


async def sync_rows(session: AsyncSession) -> None:
    """One lease row per registered backend, none for a backend that left the pool."""
    missing = await session.execute(
        text(
            "SELECT (SELECT count(*) FROM backends b WHERE NOT EXISTS "
            "(SELECT 1 FROM backend_leases l WHERE l.backend = b.url)) + "
            "(SELECT count(*) FROM backend_leases l WHERE NOT EXISTS "
            "(SELECT 1 FROM backends b WHERE b.url = l.backend))"
        )
    )
    if not missing.scalar_one():
        return  # the usual case: a read, and no row locked
    await session.execute(
        text(
            "INSERT INTO backend_leases (backend, generation, healthy) "
            "SELECT url, 0, false FROM backends ON CONFLICT (backend) DO NOTHING"
        )
    )
    await session.execute(text("DELETE FROM backend_leases WHERE backend NOT IN (SELECT url FROM backends)"))


async def renew(
    session: AsyncSession, replica: str, held: dict[str, tuple[int, bool]], ttl: float
) -> set[str]:
    """Extend the leases this replica holds ({backend: (generation, healthy)}); returns those still
    held (a lease that expired, or that another replica took meanwhile, is not renewed)."""
    if not held:
        return set()
    urls = list(held)
    rows = await session.execute(
        text(
            "UPDATE backend_leases AS l SET heartbeat_at = clock_timestamp(), "
            f"expires_at = clock_timestamp() + {_TTL}, healthy = m.healthy "
            "FROM unnest(CAST(:urls AS text[]), CAST(:gens AS bigint[]), CAST(:healthy AS boolean[])) "
            "AS m(backend, generation, healthy) "
            "WHERE l.backend = m.backend AND l.generation = m.generation AND l.owner = :owner "
            "AND l.expires_at > clock_timestamp() RETURNING l.backend"
        ),
        {
            "urls": urls,
            "gens": [held[u][0] for u in urls],
            "healthy": [held[u][1] for u in urls],
            "owner": replica,
            "ttl": ttl,
        },
    )
    return set(rows.scalars())


async def acquire(session: AsyncSession, backend: str, replica: str, name: str, ttl: float) -> int | None:
    """Take a backend's lease if it is free (never held, given back, or expired); returns the new
    generation, or None when another replica holds it. A lease row locked by a transition of its
    old owner (still under way, or left open by a paused replica until the server ends its
    session) is skipped, not waited for: the next round tries again, and the other backends are
    taken meanwhile."""
    row = await session.execute(
        text(
            "UPDATE backend_leases SET owner = :owner, owner_name = :name, generation = generation + 1, "
            "acquired_at = clock_timestamp(), heartbeat_at = clock_timestamp(), "
            f"expires_at = clock_timestamp() + {_TTL}, healthy = false "
            "WHERE backend = (SELECT backend FROM backend_leases WHERE backend = :backend "
            "AND (owner IS NULL OR expires_at <= clock_timestamp()) FOR UPDATE SKIP LOCKED) "
            "RETURNING generation"
        ),
        {"owner": replica, "name": name, "backend": backend, "ttl": ttl},
    )
    return row.scalar_one_or_none()


async def release(session: AsyncSession, backend: str, fence: Fence) -> None:
    """Give a lease back now (it is free at once) and tell the other replicas."""
    await session.execute(
        text(
            "UPDATE backend_leases SET owner = NULL, owner_name = NULL, expires_at = clock_timestamp(), "
            "healthy = false WHERE backend = :backend AND owner = :owner AND generation = :generation"
        ),
        {"backend": backend, "owner": fence.owner, "generation": fence.generation},
    )
    await announce(session)


async def announce(session: AsyncSession) -> None:
    await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


_ROWS = (
    "SELECT backend, owner, owner_name, generation, acquired_at, heartbeat_at, expires_at, healthy, "
    "coalesce(owner IS NOT NULL AND expires_at > clock_timestamp(), false) AS live FROM backend_leases"
)


async def all_leases(session: AsyncSession) -> dict[str, LeaseRow]:
    return {row.backend: LeaseRow(*row) for row in await session.execute(text(_ROWS))}


async def lease_of(session: AsyncSession, backend: str) -> LeaseRow | None:
    row = (await session.execute(text(_ROWS + " WHERE backend = :b"), {"b": backend})).first()
    return None if row is None else LeaseRow(*row)
