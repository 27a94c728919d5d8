"""Execution order and cache keys, as ComfyUI 0.3.64 computes them.

The order matters to clients (it is the order of `executing` messages), so ExecutionList is a
port of ComfyUI's: nodes are staged from the requested outputs, cached inputs are not staged
at all, and among the ready nodes an output node goes first, then a node that unblocks an
output, then one two steps away from an output, then the first ready one.

Cache keys follow ComfyUI's classic cache (CacheKeySetInputSignature): a node's key is its
class, its IS_CHANGED value, its non-link inputs and, recursively, the keys of what it is linked
to; the node id is part of it only for classes with a hidden UNIQUE_ID input. ComfyUI keeps
only the entries the current prompt can use, so effectively it caches against the previous
prompt; so does the emulator.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .catalog import NodeCatalog
from .validation import is_link


class DependencyCycleError(Exception):
    pass


class ExecutionList:
    def __init__(
        self, prompt: dict[str, Any], catalog: NodeCatalog, is_cached: Callable[[str], bool]
    ) -> None:
        self.prompt = prompt
        self.catalog = catalog
        self.is_cached = is_cached
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict[int, bool]]] = {}
        self.staged: str | None = None

    def is_empty(self) -> bool:
        return not self.pending

    def add_node(self, node_id: str) -> None:
        node_ids = [node_id]
        links: list[tuple[str, int, str]] = []
        while node_ids:
            unique_id = node_ids.pop()
            if unique_id in self.pending:
                continue
            self.pending[unique_id] = True
            self.block_count[unique_id] = 0
            self.blocking[unique_id] = {}
            for value in self.prompt[unique_id]["inputs"].values():
                # (a link in an undeclared input is not validated: skip it if it leads nowhere)
                if is_link(value) and value[0] in self.prompt:
                    from_id, from_socket = value
                    if not self.is_cached(from_id):
                        node_ids.append(from_id)
                    links.append((from_id, from_socket, unique_id))
        for from_id, from_socket, to_id in links:
            if not self.is_cached(from_id):
                self.add_node(from_id)
                if to_id not in self.blocking[from_id]:
                    self.blocking[from_id][to_id] = {}
                    self.block_count[to_id] += 1
                self.blocking[from_id][to_id][from_socket] = True

    def stage(self) -> str:
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            raise DependencyCycleError("Dependency cycle detected")
        self.staged = self._pick(ready)
        return self.staged

    def complete(self) -> None:
        node_id = self.staged
        assert node_id is not None
        del self.pending[node_id]
        for blocked in self.blocking[node_id]:
            self.block_count[blocked] -= 1
        del self.blocking[node_id]
        self.staged = None

    def blocked_nodes(self) -> list[str]:
        return [n for n in self.pending if self.block_count[n] > 0]

    def _is_output(self, node_id: str) -> bool:
        return self.catalog.spec(self.prompt[node_id]["class_type"]).output_node

    def _pick(self, ready: list[str]) -> str:
        for node_id in ready:
            if self._is_output(node_id):
                return node_id
        for node_id in ready:
            for blocked in self.blocking[node_id]:
                if self._is_output(blocked):
                    return node_id
        for node_id in ready:
            for blocked in self.blocking[node_id]:
                for blocked1 in self.blocking[blocked]:
                    if self._is_output(blocked1):
                        return node_id
        return ready[0]


def needed_nodes(prompt: dict[str, Any], outputs: list[str]) -> list[str]:
    """The outputs and everything they depend on."""
    seen: dict[str, None] = {}
    stack = list(outputs)
    while stack:
        n = stack.pop()
        if n in seen or n not in prompt:
            continue
        seen[n] = None
        for v in prompt[n]["inputs"].values():
            if is_link(v):
                stack.append(v[0])
    return list(seen)


@dataclass(slots=True)
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


class OutputCache:
    """Node outputs by cache key, kept for the prompt being run (see the module docstring)."""

    def __init__(self) -> None:
        self._entries: dict[str, CacheEntry] = {}
        self._keys: dict[str, str] = {}

    def set_prompt(
        self, prompt: dict[str, Any], catalog: NodeCatalog, is_changed: Callable[[str], Any]
    ) -> None:
        keys: dict[str, str] = {}

        def key_of(node_id: str, depth: int = 0) -> str:
            # A digest per node over its own signature and its ancestors' digests: linear in
            # the graph size, equal exactly when ComfyUI's nested signatures would be equal.
            if node_id in keys:
                return keys[node_id]
            node = prompt.get(node_id)
            if node is None or depth > 500:
                return f"missing:{node_id}:{depth}"  # never equal to a real entry
            keys[node_id] = f"cycle:{node_id}"
            class_type = node["class_type"]
            sig: list[Any] = [class_type, is_changed(node_id)]
            if "UNIQUE_ID" in catalog.spec(class_type).hidden.values():
                sig.append(node_id)
            inputs = node["inputs"]
            for name in sorted(inputs):
                v = inputs[name]
                if is_link(v):
                    sig.append([name, ["ANCESTOR", key_of(v[0], depth + 1), v[1]]])
                else:
                    sig.append([name, v])
            digest = hashlib.sha256(json.dumps(sig, sort_keys=True, default=repr).encode()).hexdigest()
            keys[node_id] = digest
            return digest

        for node_id in prompt:
            key_of(node_id)
        self._keys = keys
        wanted = set(keys.values())
        self._entries = {k: v for k, v in self._entries.items() if k in wanted}

    def get(self, node_id: str) -> CacheEntry | None:
        key = self._keys.get(node_id)
        return None if key is None else self._entries.get(key)

    def set(self, node_id: str, entry: CacheEntry) -> None:
        key = self._keys.get(node_id)
        if key is not None:
            self._entries[key] = entry

    def clear(self) -> None:
        self._entries.clear()
        self._keys.clear()
