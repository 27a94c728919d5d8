"""ComfyUI's PromptQueue: the pending heap, the running item, and the history.

Items are ComfyUI's 6-tuples `(number, prompt_id, prompt, extra_data, outputs_to_execute,
sensitive)`; `/queue` and history show the first five. Every change calls `on_update`, which
broadcasts a `status` message, with ComfyUI's quirks kept: deleting the last pending item
announces the change twice (it goes through `wipe_queue`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

Item = tuple[Any, str, dict[str, Any], dict[str, Any], list[str], dict[str, Any]]


class PromptQueue:
    def __init__(self, on_update: Callable[[], None], history_max: int) -> None:
        self._on_update = on_update
        self.history_max = max(1, history_max)
        self.heap: list[tuple[Any, str, int, Item]] = []
        self.running: dict[int, Item] = {}
        self.history: dict[str, dict[str, Any]] = {}
        #: The next `number` (ComfyUI counts every POST /prompt, valid or not).
        self.number = 0
        self._seq = itertools.count()
        self._ids = itertools.count()
        self._has_items = asyncio.Event()

    # -- queue --------------------------------------------------------------------------------

    def put(self, item: Item) -> None:
        heapq.heappush(self.heap, (item[0], item[1], next(self._seq), item))
        self._has_items.set()
        self._on_update()

    async def get(self) -> tuple[int, Item]:
        while not self.heap:
            self._has_items.clear()
            await self._has_items.wait()
        item = heapq.heappop(self.heap)[3]
        item_id = next(self._ids)
        self.running[item_id] = item
        self._on_update()
        return item_id, item

    def task_done(self, item_id: int, history_result: dict[str, Any], status: dict[str, Any]) -> None:
        item = self.running.pop(item_id)
        while len(self.history) >= self.history_max:
            self.history.pop(next(iter(self.history)))
        entry: dict[str, Any] = {"prompt": list(item[:5]), "outputs": {}, "status": status}
        entry.update(history_result)
        self.history[item[1]] = entry  # a reused prompt id keeps its old place, as in ComfyUI
        self._on_update()

    def tasks_remaining(self) -> int:
        return len(self.heap) + len(self.running)

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.tasks_remaining()}}

    def current_queue(self) -> tuple[list[list[Any]], list[list[Any]]]:
        """`(running, pending)`, each item cut to its first five fields. Pending is in heap
        order, as ComfyUI returns it (not sorted when `front` or `number` were used)."""
        running = [list(i[:5]) for i in self.running.values()]
        pending = [list(e[3][:5]) for e in self.heap]
        return running, pending

    def delete_queue_item(self, prompt_id: str) -> bool:
        for x, entry in enumerate(self.heap):
            if entry[1] == prompt_id:
                if len(self.heap) == 1:
                    self.wipe_queue()
                else:
                    self.heap.pop(x)
                    heapq.heapify(self.heap)
                self._on_update()
                return True
        return False

    def wipe_queue(self) -> None:
        self.heap = []
        self._on_update()

    # -- history ------------------------------------------------------------------------------

    def get_history(self, max_items: int | None = None, offset: int = -1) -> dict[str, Any]:
        """ComfyUI's rules: with max_items and no offset, the newest max_items, oldest first."""
        if offset < 0 and max_items is not None:
            if max_items <= 0:
                return {}
            keys = list(itertools.islice(reversed(self.history), max_items))
            keys.reverse()
            return {k: self.history[k] for k in keys}
        start = max(offset, 0)
        out: dict[str, Any] = {}
        for k in itertools.islice(self.history, start, None):
            out[k] = self.history[k]
            if max_items is not None and len(out) >= max_items:
                break
        return out

    def wipe_history(self) -> None:
        self.history.clear()

    def delete_history_item(self, prompt_id: str) -> None:
        self.history.pop(prompt_id, None)
