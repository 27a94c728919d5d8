"""Prompts, the queue and history: `/prompt`, `/queue`, `/interrupt`, `/free`, `/history`."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from ..process import Process
from ..validation import SENSITIVE_EXTRA_DATA_KEYS
from .common import internal_error


def routes(process: Process) -> web.RouteTableDef:
    table = web.RouteTableDef()
    _submit_route(table, process)
    _queue_routes(table, process)
    _history_routes(table, process)
    return table


def _submit_route(table: web.RouteTableDef, process: Process) -> None:
    parts = process.parts

    @table.post("/prompt")
    async def post_prompt(request: web.Request) -> web.Response:
        try:
            json_data = await request.json()
        except ValueError:
            return internal_error()
        if not isinstance(json_data, (dict, list, str)):
            return internal_error()
        queue = process.state.queue
        try:
            if "number" in json_data:
                number: Any = float(json_data["number"])  # type: ignore[index]
            else:
                number = queue.number
                if "front" in json_data and json_data["front"]:  # type: ignore[index]
                    number = -number
                queue.number += 1
        except (TypeError, ValueError):
            return internal_error()
        if not isinstance(json_data, dict) or "prompt" not in json_data:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = json_data["prompt"]
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        try:
            valid = parts.validator.validate_prompt(prompt, json_data.get("partial_execution_targets"))
        except Exception:  # noqa: BLE001  as ComfyUI: any failure is answered, never crashes the server
            return internal_error()
        extra_data = json_data.get("extra_data", {})
        if not isinstance(extra_data, dict):
            return internal_error()
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not valid[0]:
            return web.json_response({"error": valid[1], "node_errors": valid[3]}, status=400)
        sensitive = {k: extra_data.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra_data}
        queue.put((number, prompt_id, prompt, extra_data, valid[2], sensitive))
        parts.prompts_received.append(prompt_id)
        # Who sent it (a gateway replica names itself): tests check that one replica at a time does.
        parts.prompt_senders[prompt_id] = request.headers.get("X-Gateway-Replica")
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": valid[3]})


def _queue_routes(table: web.RouteTableDef, process: Process) -> None:
    interrupts = process.parts.interrupts

    @table.get("/prompt")
    async def get_prompt(request: web.Request) -> web.Response:
        return web.json_response(process.state.queue.queue_info())

    @table.get("/queue")
    async def get_queue(request: web.Request) -> web.Response:
        running, pending = process.state.queue.current_queue()
        return web.json_response({"queue_running": running, "queue_pending": pending})

    @table.post("/queue")
    async def post_queue(request: web.Request) -> web.Response:
        json_data = await request.json()
        queue = process.state.queue
        if "clear" in json_data and json_data["clear"]:
            queue.wipe_queue()
        if "delete" in json_data:
            for prompt_id in json_data["delete"]:
                queue.delete_queue_item(prompt_id)
        return web.Response(status=200)

    @table.post("/interrupt")
    async def post_interrupt(request: web.Request) -> web.Response:
        try:
            json_data = await request.json()
        except ValueError:
            json_data = {}
        interrupts.append(json_data)
        prompt_id = json_data.get("prompt_id") if isinstance(json_data, dict) else None
        state = process.state
        if prompt_id:
            running, _ = state.queue.current_queue()
            if any(item[1] == prompt_id for item in running):
                state.executor.interrupt.set()
        else:
            state.executor.interrupt.set()
        return web.Response(status=200)

    @table.post("/free")
    async def post_free(request: web.Request) -> web.Response:
        return web.Response(status=200)


def _history_routes(table: web.RouteTableDef, process: Process) -> None:
    @table.get("/history")
    async def get_history(request: web.Request) -> web.Response:
        q = request.rel_url.query
        max_items = int(q["max_items"]) if "max_items" in q else None
        offset = int(q["offset"]) if "offset" in q else -1
        return web.json_response(process.state.queue.get_history(max_items=max_items, offset=offset))

    @table.get("/history/{prompt_id}")
    async def get_history_item(request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = process.state.queue.history.get(prompt_id)
        return web.json_response({} if entry is None else {prompt_id: entry})

    @table.post("/history")
    async def post_history(request: web.Request) -> web.Response:
        json_data = await request.json()
        queue = process.state.queue
        if "clear" in json_data and json_data["clear"]:
            queue.wipe_history()
        if "delete" in json_data:
            for prompt_id in json_data["delete"]:
                queue.delete_history_item(prompt_id)
        return web.Response(status=200)
