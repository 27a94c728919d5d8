"""`GET /ws`: the WebSocket (see ws.SocketHub for the protocol)."""

from __future__ import annotations

from aiohttp import web

from ..process import Process


def routes(process: Process) -> web.RouteTableDef:
    table = web.RouteTableDef()
    hub = process.parts.hub

    @table.get("/ws")
    async def websocket_handler(request: web.Request) -> web.StreamResponse:
        def on_connect(sid: str) -> None:
            # ComfyUI tells a reconnecting client which node of its prompt is running.
            executor = process.state.executor
            if executor.client_id == sid and executor.last_node_id is not None:
                hub.send_json("executing", {"node": executor.last_node_id}, sid)

        return await hub.handle(request, lambda: process.state.queue.queue_info(), on_connect)

    return table
