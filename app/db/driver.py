"""The hot path's statements, run on the database driver's connection inside the session's
transaction.

A job runs about a dozen small statements on its way (its insert, the claim, its transitions and
their events, the download's lookup). Through SQLAlchemy each cost 0.3-0.5 ms of CPU on SQLite
(the execution context, the ORM or Core result, a greenlet switch), where SQLite spends
microseconds: the statements were a third of a job's CPU. On SQLite these statements are run
here instead: SQLAlchemy compiles each once for the dialect (the same SQL it would send), the
columns' own type processors convert the values both ways, and the driver's cursor runs it in the
transaction that the session began, which the session commits or rolls back as before (its
`after_commit` hooks, its pool, its busy handling in app/db/sqlite_inline.py).

On PostgreSQL a statement costs a round trip either way and the asyncpg adapter's transaction
handling is SQLAlchemy's own business, so there the same statements run through the session's
Core connection. Both paths return plain tuples in the statement's column order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import inspect
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.expression import Executable

Processor = Callable[[Any], Any] | None
# Marks a parameter the caller gives (the others are fixed in the statement).
_GIVEN = object()


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A statement as the driver takes it: its SQL, its parameters in positional order, and how
    the values of each are converted."""

    sql: str
    # (name, processor, constant): a parameter the caller gives, or one fixed in the statement.
    params: tuple[tuple[str, Processor, Any], ...]
    results: tuple[Processor, ...]

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        out = []
        for name, processor, constant in self.params:
            value = values[name] if constant is _GIVEN else constant
            out.append(value if processor is None or value is None else processor(value))
        return out

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        if not self.results:
            return tuple(raw)
        return tuple(v if p is None or v is None else p(v) for p, v in zip(self.results, raw, strict=True))


class Statement:
    """A Core statement (with `bindparam`s for what varies) to run on the driver; compiled once
    per dialect, on first use."""

    __slots__ = ("clause", "_compiled")

    def __init__(self, clause: Executable) -> None:
        self.clause = clause
        self._compiled: dict[str, _Compiled] = {}

    def compiled(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect.name)
        if found is None:
            found = self._compiled[dialect.name] = self._compile(dialect)
        return found

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled: Any = cast(ClauseElement, self.clause).compile(dialect=dialect)
        given = {key for key, bind in compiled.binds.items() if bind.required}
        # Lists fixed in the statement (`IN ('queued', 'running')`) are expanded here, once.
        state = compiled.construct_expanded_state(dict.fromkeys(given))
        base_of = {name: base for base, names in state.parameter_expansion.items() for name in names}
        params = []
        for name in state.positiontup:
            bind = compiled.binds[base_of.get(name, name)]
            constant = _GIVEN if name in given else state.parameters[name]
            params.append((name, bind.type.dialect_impl(dialect).bind_processor(dialect), constant))
        columns: Any = getattr(self.clause, "selected_columns", None)
        if columns is None:
            columns = getattr(self.clause, "exported_columns", ())
        results = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        )
        return _Compiled(state.statement, tuple(params), results)


def detached(model: type[Any], keys: Sequence[str], row: Sequence[Any]) -> Any:
    """An object of the mapped class `model` outside any session, reading as `row` (`keys`: its
    attributes in the row's order). Its values are set as a load sets them: the class's
    constructor, which records each as a change, cost 15 times more."""
    obj = inspect(model).class_manager.new_instance()
    obj.__dict__.update(zip(keys, row, strict=True))
    return obj


def _cursor(conn: AsyncConnection) -> Any:
    """A cursor of the driver's connection under `conn` (app/db/sqlite_inline.py's). The session
    has checked the connection out, so reaching it does no I/O (no greenlet needed)."""
    sync = conn.sync_connection
    assert sync is not None  # a connection the session holds is open
    driver_connection = sync.connection.driver_connection
    assert driver_connection is not None
    return driver_connection.cursor()


async def fetch(
    session: AsyncSession, statement: Statement, values: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """Run `statement` with `values` in the session's transaction; its rows (none without RETURNING)."""
    conn = await session.connection()
    if conn.dialect.name != "sqlite":
        return [tuple(row) for row in await conn.execute(statement.clause, dict(values))]
    compiled = statement.compiled(conn.dialect)
    return [compiled.row(row) for row in await _run(conn, compiled.sql, compiled.args(values))]


async def execute_many(
    session: AsyncSession, statement: Statement, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Run `statement` (with no RETURNING) once per item of `rows`, in the session's transaction."""
    if not rows:
        return
    conn = await session.connection()
    if conn.dialect.name != "sqlite":
        await conn.execute(statement.clause, [dict(row) for row in rows])
        return
    compiled = statement.compiled(conn.dialect)
    await _run(conn, compiled.sql, [compiled.args(row) for row in rows], many=True)


async def _run(conn: AsyncConnection, sql: str, args: list[Any], *, many: bool = False) -> list[Any]:
    """`sql` on the driver's cursor: once with `args` (its rows), or once per item of `args`
    (`many`). A driver error comes back as SQLAlchemy reports it (IntegrityError, ...)."""
    cursor = _cursor(conn)
    try:
        if many:
            await cursor.executemany(sql, args)
            return []
        await cursor.execute(sql, args)
        return list(await cursor.fetchall())
    except sqlite3.Error as err:
        raise DBAPIError.instance(sql, args, err, sqlite3.Error) from err
    finally:
        await cursor.close()
