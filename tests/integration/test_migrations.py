"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Index, inspect
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.models import Base


def _has_expressions(index: Any) -> bool:
    return isinstance(index, Index) and not all(isinstance(e, Column) for e in index.expressions)


def _comparable(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    # Alembic cannot compare an index with a DESC column (it warns, and reports it as removed and
    # added); those are checked by name and columns below instead.
    return not (type_ == "index" and (_has_expressions(obj) or _has_expressions(compare_to)))


async def test_migrated_database_matches_the_models(db_url: str) -> None:
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"include_object": _comparable}), Base.metadata
                )
            )
            reflected = await conn.run_sync(
                lambda sync: {i["name"]: i for i in inspect(sync).get_indexes("jobs")}
            )
    finally:
        await engine.dispose()
    assert diff == []
    expected = [i for table in Base.metadata.tables.values() for i in table.indexes if _has_expressions(i)]
    assert expected, "no index with a DESC column left to check"
    for index in expected:
        assert index.name in reflected, f"{index.name} is in the models but the migrations do not make it"
        # A DESC column is declared as text ("priority DESC"): its first word is the column.
        columns = [e.name if isinstance(e, Column) else str(e).split()[0] for e in index.expressions]
        assert reflected[index.name]["column_names"] == columns, index.name
