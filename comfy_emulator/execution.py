"""Running prompts: the worker (ServerState.worker) and the Executor.

This follows ComfyUI 0.3.64's PromptExecutor.execute_async and execution.execute closely,
because the order and targeting of its messages is what clients depend on:

- `execution_start` and `execution_cached` (all prompt nodes with a cache hit), then for each
  node in ExecutionList order: `progress_state` (running), `executing`, the node, `executed`
  for nodes with UI output, `progress_state` (finished). A cached node visited as an output
  gets only `executed` (its cached UI) and `progress_state`.
- `execution_success` / `execution_error` / `execution_interrupted` end it; the worker then
  writes history, broadcasts `status`, and sends `executing` with node None.
- The `execution_*` messages, `executing` and `executed` go to the prompt's client only, and
  not at all without a client; `progress`, `progress_state` and previews go to the client or,
  without one, to every socket; `execution_interrupted` is always sent (broadcast=True).
- Interrupts are noticed where ComfyUI notices them: when a node starts and on each progress
  update (and, in the emulator, during a sampler's step sleep, so it reacts at once).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import media as _media  # noqa: F401 - registers the media and text output nodes
from . import nodes as node_impls
from .catalog import NodeSpec
from .context import Interrupted, InterruptSignal, NodeContext, PromptRun
from .faults import SAMPLER_CLASSES, JobFault
from .files import sha256_file
from .graph import CacheEntry, DependencyCycleError, ExecutionList, OutputCache, needed_nodes
from .queue import PromptQueue
from .validation import full_type_name, is_link
from .values import format_value

if TYPE_CHECKING:
    from .parts import Parts

logger = logging.getLogger(__name__)

#: The ComfyUI frames above a node's own code in an execution_error traceback (as recorded).
_TB_COMFY = [
    '  File "<COMFYUI_ROOT>/execution.py", line 496, in execute\n    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n                                                              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n',
    '  File "<COMFYUI_ROOT>/execution.py", line 315, in get_output_data\n    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n                    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n',
    '  File "<COMFYUI_ROOT>/execution.py", line 289, in _async_map_node_over_list\n    await process_inputs(input_dict, i)\n',
    '  File "<COMFYUI_ROOT>/execution.py", line 277, in process_inputs\n    result = f(**inputs)\n             ^^^^^^^^^^^\n',
]
_TB_HARNESS_FAIL = '  File "<COMFYUI_ROOT>/custom_nodes/harness_nodes/__init__.py", line 82, in run\n    raise RuntimeError("harness failure")\n'
_TB_INJECTED = (
    '  File "<COMFYUI_ROOT>/comfy_emulator/faults.py", line 1, in inject\n    raise RuntimeError(message)\n'
)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

#: Classes with an IS_CHANGED: their value is part of the cache key and of the PNG prompt.
_IS_CHANGED_FILE_NODES = ("LoadImage", "LoadImageMask")


class _InjectedFailure(RuntimeError):
    pass


class Executor:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.cache = OutputCache()
        self.interrupt = InterruptSignal()
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.status_messages: list[tuple[str, dict[str, Any]]] = []
        self._signatures: dict[Callable[..., Any], set[str] | None] = {}

    def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": int(time.time() * 1000)}
        self.status_messages.append((event, data))
        if self.client_id is not None or broadcast:
            self.parts.hub.send_json(event, data, self.client_id)

    def _is_changed(self, run: PromptRun, node_id: str) -> Any:
        node = run.prompt[node_id]
        if "is_changed" in node:
            value = node["is_changed"]
        elif node["class_type"] in _IS_CHANGED_FILE_NODES:
            path = self.parts.folders.annotated(
                str(node["inputs"].get("image", "")), self.parts.folders.input
            )
            try:
                value = [sha256_file(path)] if path is not None else [float("nan")]
            except OSError:
                value = [float("nan")]
        else:
            value = False
        run.is_changed[node_id] = value
        return value

    async def execute(
        self,
        prompt: dict[str, Any],
        prompt_id: str,
        extra_data: dict[str, Any],
        execute_outputs: list[str],
        fault: JobFault | None,
    ) -> tuple[bool, dict[str, Any]]:
        """Runs one prompt; returns `(success, history_result)`. Messages are in self.status_messages."""
        self.interrupt.reset()
        self.client_id = extra_data.get("client_id")
        self.status_messages = []
        self.add_message("execution_start", {"prompt_id": prompt_id}, broadcast=False)
        run = PromptRun(self.parts, self.interrupt, prompt, prompt_id, extra_data, fault)
        self.cache.set_prompt(prompt, self.parts.catalog, lambda n: self._is_changed(run, n))
        use_cache = fault is None
        if fault is not None and fault.kind == "hang":
            needed = needed_nodes(prompt, execute_outputs)
            run.hang_on_sampler = any(prompt[n]["class_type"] in SAMPLER_CLASSES for n in needed)

        def cached(node_id: str) -> CacheEntry | None:
            return self.cache.get(node_id) if use_cache else None

        cached_nodes = [n for n in prompt if cached(n) is not None]
        self.add_message("execution_cached", {"nodes": cached_nodes, "prompt_id": prompt_id}, broadcast=False)

        execution_list = ExecutionList(prompt, self.parts.catalog, lambda n: cached(n) is not None)
        current_outputs = list(prompt)
        for node_id in execute_outputs:
            execution_list.add_node(node_id)

        success = True
        while not execution_list.is_empty():
            try:
                node_id = execution_list.stage()
            except DependencyCycleError as ex:
                error = {
                    "node_id": execution_list.blocked_nodes()[0],
                    "exception_message": str(ex),
                    "exception_type": "graph.DependencyCycleError",
                    "traceback": [],
                    "current_inputs": [],
                }
                self._handle_error(run, current_outputs, error, ex)
                success = False
                break
            ok, error, ex = await self._execute_node(run, node_id, cached(node_id))
            if not ok:
                self._handle_error(run, current_outputs, error, ex)
                success = False
                break
            execution_list.complete()
            await asyncio.sleep(0)
        else:
            self.add_message("execution_success", {"prompt_id": prompt_id}, broadcast=False)

        history_result = {
            "outputs": {n: ui["output"] for n, ui in run.ui_outputs.items()},
            "meta": {n: ui["meta"] for n, ui in run.ui_outputs.items()},
        }
        self.last_node_id = None
        return success, history_result

    async def _execute_node(
        self, run: PromptRun, node_id: str, cached: CacheEntry | None
    ) -> tuple[bool, Any, Any]:
        parts, hub = self.parts, self.parts.hub
        node = run.prompt[node_id]
        class_type = node["class_type"]
        spec = parts.catalog.spec(class_type)
        if cached is not None:
            if run.client_id is not None:
                cached_ui = cached.ui or {}
                hub.send_json(
                    "executed",
                    {
                        "node": node_id,
                        "display_node": node_id,
                        "output": cached_ui.get("output"),
                        "prompt_id": run.prompt_id,
                    },
                    run.client_id,
                )
                if cached.ui is not None:
                    run.ui_outputs[node_id] = cached.ui
            run.progress.finish(node_id)
            run.outputs[node_id] = cached.outputs
            return True, None, None

        kwargs: dict[str, Any] = {}
        try:
            run.progress.start(node_id)
            kwargs = self._inputs(run, node, spec)
            if run.client_id is not None:
                self.last_node_id = node_id
                hub.send_json(
                    "executing",
                    {"node": node_id, "display_node": node_id, "prompt_id": run.prompt_id},
                    run.client_id,
                )
            self.interrupt.check()
            await self._apply_faults(run, node_id, class_type, spec)
            impl = node_impls.IMPLS.get(class_type)
            if class_type not in SAMPLER_CLASSES and parts.config.node_seconds > 0:
                await asyncio.sleep(parts.config.node_seconds)
            ctx = NodeContext(run, node_id, class_type)
            if impl is None:
                outputs, ui = await node_impls.passthrough(ctx, spec, kwargs)
            else:
                outputs, ui = await impl(ctx, **self._accepted(impl, kwargs))
            entry_ui = None
            if ui:
                entry_ui = {
                    "meta": {
                        "node_id": node_id,
                        "display_node": node_id,
                        "parent_node": None,
                        "real_node_id": node_id,
                    },
                    "output": ui,
                }
                run.ui_outputs[node_id] = entry_ui
                if run.client_id is not None:
                    hub.send_json(
                        "executed",
                        {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": run.prompt_id},
                        run.client_id,
                    )
            self.cache.set(node_id, CacheEntry(outputs, entry_ui))
            run.outputs[node_id] = outputs
        except Interrupted as ex:
            return False, {"node_id": node_id}, ex
        except Exception as ex:  # noqa: BLE001  a node's failure becomes an execution_error, as in ComfyUI
            return (
                False,
                self._error_details(run, node_id, ex, traceback.extract_tb(ex.__traceback__), kwargs),
                ex,
            )
        run.progress.finish(node_id)
        run.executed[node_id] = None
        return True, None, None

    async def _apply_faults(self, run: PromptRun, node_id: str, class_type: str, spec: NodeSpec) -> None:
        fault = run.fault
        if fault is not None and not run.fault_fired:
            if fault.kind == "fail":
                run.fault_fired = True
                raise _InjectedFailure(fault.message)
            if fault.kind == "hang" and (
                class_type in SAMPLER_CLASSES if run.hang_on_sampler else spec.output_node
            ):
                run.fault_fired = True
                await self.interrupt.wait()
                self.interrupt.check()
        message = self.parts.faults.class_failure(class_type)
        if message is not None:
            raise _InjectedFailure(message)

    def _inputs(self, run: PromptRun, node: dict[str, Any], spec: NodeSpec) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        inputs = node["inputs"]
        for name in spec.inputs:
            if name not in inputs:
                continue
            value = inputs[name]
            if is_link(value):
                upstream = run.outputs.get(value[0])
                if upstream is None:
                    entry = self.cache.get(value[0])
                    upstream = entry.outputs if entry is not None else ()
                kwargs[name] = upstream[value[1]] if value[1] < len(upstream) else None
            else:
                kwargs[name] = value
        return kwargs

    def _accepted(self, impl: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Only the inputs the implementation takes (object_info may declare more)."""
        if impl not in self._signatures:
            params = inspect.signature(impl).parameters
            has_var = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            self._signatures[impl] = None if has_var else set(params) - {"ctx"}
        names = self._signatures[impl]
        return kwargs if names is None else {k: v for k, v in kwargs.items() if k in names}

    def _error_details(
        self, run: PromptRun, node_id: str, ex: BaseException, tb: Any, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        spec = self.parts.catalog.spec(run.prompt[node_id]["class_type"])
        current_inputs = {name: [format_value(v)] for name, v in kwargs.items()}
        for name, kind in spec.hidden.items():
            if kind == "UNIQUE_ID":
                current_inputs[name] = [node_id]
            elif kind == "PROMPT":
                current_inputs[name] = [format_value(run.png_prompt())]
        return {
            "node_id": node_id,
            "exception_message": f"{ex}\n",
            "exception_type": full_type_name(ex) if not isinstance(ex, _InjectedFailure) else "RuntimeError",
            "traceback": self._traceback(run.prompt[node_id]["class_type"], ex, tb),
            "current_inputs": current_inputs,
        }

    @staticmethod
    def _traceback(class_type: str, ex: BaseException, tb: Any) -> list[str]:
        """ComfyUI's frames, then the node's own, with fake paths like the recordings'."""
        if isinstance(ex, _InjectedFailure):
            return [*_TB_COMFY, _TB_INJECTED]
        if class_type == "HarnessFail":
            return [*_TB_COMFY, _TB_HARNESS_FAIL]
        own = [
            f
            for f in tb
            if os.path.abspath(f.filename).startswith(_PACKAGE_DIR)
            and not f.filename.endswith("execution.py")
        ]
        lines = traceback.format_list(own)
        lines = [line.replace(_PACKAGE_DIR, "<COMFYUI_ROOT>/comfy_emulator") for line in lines]
        return [*_TB_COMFY, *lines]

    def _handle_error(
        self, run: PromptRun, current_outputs: list[str], error: dict[str, Any], ex: BaseException
    ) -> None:
        node_id = error["node_id"]
        mes: dict[str, Any] = {
            "prompt_id": run.prompt_id,
            "node_id": node_id,
            "node_type": run.prompt[node_id]["class_type"],
            "executed": list(run.executed),
        }
        if isinstance(ex, Interrupted):
            self.add_message("execution_interrupted", mes, broadcast=True)
        else:
            mes.update(
                exception_message=error["exception_message"],
                exception_type=error["exception_type"],
                traceback=error["traceback"],
                current_inputs=error["current_inputs"],
                current_outputs=list(current_outputs),
            )
            self.add_message("execution_error", mes, broadcast=False)


class ServerState:
    """What a ComfyUI process holds in memory and loses on restart."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.queue = PromptQueue(self._queue_updated, parts.config.history_max)
        self.executor = Executor(parts)

    def _queue_updated(self) -> None:
        self.parts.hub.send_json("status", {"status": self.queue.queue_info()}, None)

    async def worker(self) -> None:
        """ComfyUI's prompt_worker: one prompt at a time, in queue order."""
        queue, executor, parts = self.queue, self.executor, self.parts
        while True:
            item_id, item = await queue.get()
            prompt_id = item[1]
            parts.executed_prompts.append(prompt_id)
            extra_data = dict(item[3])
            extra_data.update(item[5])
            try:
                success, history_result = await executor.execute(
                    item[2], prompt_id, extra_data, item[4], parts.faults.take_job_fault()
                )
            except Exception:  # an emulator bug: record it as a failed prompt and carry on
                logger.exception("emulator failed to execute prompt %s", prompt_id)
                success, history_result = False, {"outputs": {}, "meta": {}}
            status = {
                "status_str": "success" if success else "error",
                "completed": success,
                "messages": [[event, data] for event, data in executor.status_messages],
            }
            queue.task_done(item_id, history_result, status)
            if executor.client_id is not None:
                parts.hub.send_json("executing", {"node": None, "prompt_id": prompt_id}, executor.client_id)
            await asyncio.sleep(0)
