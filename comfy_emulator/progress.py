"""Per-prompt node progress and the `progress_state` messages (ComfyUI's comfy_execution/progress).

Every node the prompt touches gets an entry: pending `0/1` (ints) when first seen, running
`0.0/1.0` (floats) when it starts, `value/max` on each progress step, and finished with
`value = max` at the end. A cached node is finished without being started, hence the `1/1`
ints in the recordings. Each change sends the state of every non-pending node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ProgressRegistry:
    def __init__(self, prompt_id: str, send: Callable[[str, Any], None]) -> None:
        self.prompt_id = prompt_id
        self._send = send  # (event, data) -> None, already targeted at the prompt's client
        self.nodes: dict[str, dict[str, Any]] = {}

    def _entry(self, node_id: str) -> dict[str, Any]:
        entry = self.nodes.get(node_id)
        if entry is None:
            entry = self.nodes[node_id] = {"state": "pending", "value": 0, "max": 1}
        return entry

    def start(self, node_id: str) -> None:
        entry = self._entry(node_id)
        entry["state"], entry["value"], entry["max"] = "running", 0.0, 1.0
        self._broadcast()

    def update(self, node_id: str, value: Any, max_value: Any) -> None:
        entry = self._entry(node_id)
        entry["state"], entry["value"], entry["max"] = "running", value, max_value
        self._broadcast()

    def finish(self, node_id: str) -> None:
        entry = self._entry(node_id)
        entry["state"], entry["value"] = "finished", entry["max"]
        self._broadcast()

    def _broadcast(self) -> None:
        pid = self.prompt_id
        nodes = {
            node_id: {
                "value": e["value"],
                "max": e["max"],
                "state": e["state"],
                "node_id": node_id,
                "prompt_id": pid,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, e in self.nodes.items()
            if e["state"] != "pending"
        }
        self._send("progress_state", {"prompt_id": pid, "nodes": nodes})
