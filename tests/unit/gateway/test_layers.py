"""SQL lives in app/db alone: no module above it builds a statement or runs one on a session.
(import-linter, run by .ci/run, keeps the package layers; it cannot see which SQLAlchemy names a
module uses, so this does.)"""

from __future__ import annotations

import ast
from pathlib import Path

import app

ROOT = Path(app.__file__).parent
# The wiring (cli.py) may do anything; app/db is where SQL belongs.
EXEMPT = {ROOT / "cli.py"}
QUERY_BUILDERS = {"select", "insert", "update", "delete", "func", "text", "and_", "or_", "case", "bindparam"}
SESSION_CALLS = {"execute", "scalar", "scalars", "get", "add", "delete", "refresh", "merge"}


def _modules_above_db() -> list[Path]:
    return [
        path
        for path in sorted(ROOT.rglob("*.py"))
        if (ROOT / "db") not in path.parents and path not in EXEMPT
    ]


def _findings(path: Path, base: Path = ROOT.parent) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlalchemy":
            found += [f"imports {a.name}" for a in node.names if a.name in QUERY_BUILDERS]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in SESSION_CALLS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "session"
        ):
            found.append(f"calls session.{node.func.attr}() at line {node.lineno}")
    return [f"{path.relative_to(base)}: {f}" for f in found]


def test_no_sql_is_written_outside_app_db() -> None:
    modules = _modules_above_db()
    assert len(modules) > 50  # the walk found the package
    assert [f for path in modules for f in _findings(path)] == []


def test_the_check_sees_a_query_written_in_the_wrong_layer(tmp_path: Path) -> None:
    bad = tmp_path / "route.py"
    bad.write_text(
        "from sqlalchemy import select\n"
        "async def handler(session):\n"
        "    return (await session.execute(select(1))).scalar()\n"
    )
    findings = [f.split(": ", 1)[1] for f in _findings(bad, tmp_path)]
    assert findings == ["imports select", "calls session.execute() at line 3"]
