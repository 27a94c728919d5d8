"""The emulator's modules import each other without a cycle, type-only imports included (the same
rule as the "emulator" import-linter contracts in pyproject.toml, checked here with the suite)."""

from __future__ import annotations

import ast
from pathlib import Path

import comfy_emulator

PACKAGE = Path(comfy_emulator.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that the file imports (relative or absolute, at any depth)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from . import media` imports the module media, not the package's __init__.
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules
            found.update(submodules or {base})
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as the list of its modules, or None (a depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_emulator_has_no_import_cycle() -> None:
    graph = _graph()
    # The walk sees the package's real edges (else an empty graph would pass).
    assert "comfy_emulator.process" in graph["comfy_emulator.routes.prompts"]
    assert "comfy_emulator.parts" in graph["comfy_emulator.execution"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_type_only_cycle() -> None:
    graph = _graph()
    graph["comfy_emulator.parts"] = graph["comfy_emulator.parts"] | {"comfy_emulator.emulator"}
    cycle = _cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
