"""The aiohttp application: the route groups of routes/, each route also served under `/api`
as ComfyUI's PromptServer registers them, behind the fault middleware.

Bodies and statuses follow the recordings (scenario_*.json, endpoints_get.json). The emulator's
own `/emulator/...` routes (control.py) come from the Emulator and get no `/api` alias.
"""

from __future__ import annotations

from aiohttp import web

from .config import SERVER_FEATURES
from .process import Process
from .routes import files, info, models, prompts, ws

#: In the order ComfyUI registers them.
_GROUPS = (ws, prompts, models, files, info)


def build_app(process: Process, control: web.RouteTableDef) -> web.Application:
    routes = [route for group in _GROUPS for route in group.routes(process)]
    app = web.Application(
        client_max_size=SERVER_FEATURES["max_upload_size"], middlewares=[process.parts.faults.middleware()]
    )
    api_routes = [
        web.route(route.method, "/api" + route.path, route.handler)
        for route in routes
        if isinstance(route, web.RouteDef)
    ]
    app.add_routes(routes)
    app.add_routes(api_routes)
    app.add_routes(control)
    return app
