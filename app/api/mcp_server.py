"""The MCP server (Streamable HTTP, the official `mcp` SDK) at /mcp: the templates as tools for agents.

Tools: one per template (its params schema as the input schema), plus `list_templates`, `get_job`
and `cancel_job`. A template tool submits a job of the caller's (same queue, limits, storage as
POST /v1/generate), reports its progress as MCP progress notifications, and returns its outputs:
images up to GATEWAY_MCP_INLINE_IMAGE_BYTES inline, the rest as resource links (signed URLs). A call
that outlives GATEWAY_MCP_WAIT_SECONDS returns the job id, to follow with `get_job`.

Every HTTP request is authenticated with a gateway key (`Authorization: Bearer`), through the same
lookup as the API's (a revoked key is refused from its next request); a session is bound to the
user that opened it. Tool calls spend the user's request rate like API requests.
"""

from __future__ import annotations

import json
from typing import Any, cast

import mcp_types as types
from fastapi import FastAPI
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from app.api import doors
from app.api.deps import charge
from app.api.problems import problem_response
from app.api.state import GatewayState
from app.db.models import Job, Output, Template, Upload
from app.domain import jobs, templates
from app.domain.errors import DomainError, NotFound, ValidationFailed
from app.domain.users import Principal, authenticate
from app.domain.views import output_view
from app.templates import TemplateDocument

_PRINCIPAL = "gateway.principal"

_JOB_ID_SCHEMA = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string", "description": "A job's id (a tool call's result names it)."}
    },
    "required": ["job_id"],
    "additionalProperties": False,
}
FIXED_TOOLS = {
    "list_templates": types.Tool(
        name="list_templates",
        description="The gateway's templates (each is also a tool of its own): name, description, params schema.",
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
    ),
    "get_job": types.Tool(
        name="get_job",
        description="One of your jobs as it is now: status, progress, error, and its outputs once it succeeded.",
        input_schema=_JOB_ID_SCHEMA,
    ),
    "cancel_job": types.Tool(
        name="cancel_job",
        description="Cancel one of your queued or running jobs.",
        input_schema=_JOB_ID_SCHEMA,
    ),
}


class McpEndpoint:
    """The ASGI app at /mcp: authenticates the request, then hands it to the SDK's session manager."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.server = Server(
            "comfy-gateway",
            version="0.1.0",
            instructions="Each tool but list_templates, get_job and cancel_job runs a workflow template on the "
            "gateway's ComfyUI servers and returns the images it made.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
        )
        # No DNS-rebinding guard (the SDK's is for keyless local servers): every request needs a key,
        # which a browser never adds on its own.
        self.manager = StreamableHTTPSessionManager(app=self.server)

    def _state(self) -> GatewayState:
        # The tools run in the SDK's session tasks, outside any request: the state is the app's.
        return self.app.state.gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        state = self._state()
        try:
            async with state.sessionmaker() as session:
                principal = await authenticate(
                    session, key.strip() if scheme.lower() == "bearer" else None, state.settings
                )
        except DomainError as exc:
            response = problem_response(
                exc.status, exc.problem(), {**exc.headers, "WWW-Authenticate": "Bearer"}
            )
            await response(scope, receive, send)
            return
        scope[_PRINCIPAL] = principal
        # The SDK binds a session to the credential that opened it: here the user, so that another
        # user holding the session id gets a 404 (the key is never put there).
        scope["user"] = AuthenticatedUser(
            AccessToken(token=principal.key_id or principal.user_id, client_id=principal.user_id, scopes=[])
        )
        await self.manager.handle_request(scope, receive, send)

    # ---- handlers ----------------------------------------------------------------------------

    async def _list_tools(
        self, ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        settings = self._state().settings
        tools = list(FIXED_TOOLS.values())
        async with self._state().sessionmaker() as session:
            for row in await _templates(session):
                if row.name in FIXED_TOOLS:
                    continue  # documented: the fixed tools keep their names
                doc = TemplateDocument.model_validate(row.document)
                summary = templates.summary(row.name, doc, max_string_length=settings.max_param_string_length)
                tools.append(
                    types.Tool(
                        name=row.name,
                        description=(doc.description or row.name)
                        + f". Runs as a job of yours; returns its images (or the job id after {settings.mcp_wait_seconds:g} s).",
                        input_schema=summary["params_schema"],
                    )
                )
        return types.ListToolsResult(tools=tools)

    async def _call_tool(
        self, ctx: ServerRequestContext, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        request = cast(Request, ctx.request)
        principal: Principal = request.scope[_PRINCIPAL]
        args = dict(params.arguments or {})
        try:
            if params.name in FIXED_TOOLS:
                return await self._fixed(request, principal, params.name, args)
            return await self._run_template(ctx, request, principal, params.name, args)
        except DomainError as exc:
            body = {
                "error": exc.detail,
                **({"errors": exc.extensions["errors"]} if exc.extensions.get("errors") else {}),
            }
            if exc.extensions.get("limit"):
                body["limit"] = exc.extensions["limit"]
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=json.dumps(body))], is_error=True
            )

    async def _fixed(
        self, request: Request, principal: Principal, name: str, args: dict[str, Any]
    ) -> types.CallToolResult:
        state = self._state()
        async with state.sessionmaker() as session:
            await charge(request, session, principal)
            await session.commit()
            if name == "list_templates":
                cap = state.settings.max_param_string_length
                items = [
                    templates.summary(
                        row.name, TemplateDocument.model_validate(row.document), max_string_length=cap
                    )
                    for row in await _templates(session)
                ]
                return types.CallToolResult(
                    content=[types.TextContent(type="text", text=json.dumps(items))],
                    structured_content={"templates": items},
                )
            job_id = args.get("job_id")
            if not isinstance(job_id, str) or not job_id:
                raise ValidationFailed(
                    "job_id (a string) is required.", errors=[{"field": "job_id", "message": "required"}]
                )
            if name == "cancel_job":
                canceled = await jobs.cancel(session, principal, job_id, state.signer)
                await session.commit()
                # The dispatcher takes it off its backend (as POST /v1/jobs/{id}/cancel does).
                await state.dispatcher.job_canceled(canceled)
            job = await jobs.get_owned(session, principal, job_id, fresh=True)
            return await self._job_result(request, session, job)

    async def _run_template(
        self,
        ctx: ServerRequestContext,
        request: Request,
        principal: Principal,
        name: str,
        args: dict[str, Any],
    ) -> types.CallToolResult:
        state = self._state()
        new_uploads: list[Upload] = []
        async with state.sessionmaker() as session:
            if not await templates.exists(session, name):
                raise NotFound(f"There is no tool {name!r}; list_templates shows the templates.")
            try:
                made, subs = await doors.submit(
                    request,
                    session,
                    principal,
                    name,
                    [args],
                    metadata={"via": "mcp"},
                    new_uploads=new_uploads,
                )
            finally:
                for upload in new_uploads:  # emptied once committed with the job
                    await state.storage.delete(upload.storage_key)
        job, sub = made[0], subs[0]
        step = 0
        try:
            async for event in doors.follow(sub, state.settings.mcp_wait_seconds):
                if event.event == "progress":
                    data = event.data
                    message = f"node {data.get('node')}: {data.get('value')}/{data.get('max')}"
                elif event.event == "status":
                    message = f"job {job.id} {event.data.get('status')}"
                else:
                    continue
                # The counter only grows (MCP's rule), whatever the node-by-node values do.
                step += 1
                await ctx.session.report_progress(step, None, message)
        finally:
            state.bus.unsubscribe(sub)
        async with state.sessionmaker() as session:
            current = await jobs.get_owned(session, principal, job.id, fresh=True)
            return await self._job_result(request, session, current)

    async def _job_result(self, request: Request, session: AsyncSession, job: Job) -> types.CallToolResult:
        state = self._state()
        view = await jobs.view(session, job, state.signer)
        for out in view["outputs"]:
            out["url"] = doors.absolute_url(request, out["url"])
        content: list[Any] = []
        if job.status == "succeeded":
            content.append(
                types.TextContent(
                    type="text", text=f"Job {job.id} succeeded with {len(view['outputs'])} output(s)."
                )
            )
            for output in (await jobs.outputs_for(session, [job.id]))[job.id]:
                content.append(await self._output_content(request, output))
        elif job.status in jobs.TERMINAL:
            error = (job.error or {}).get("message", "")
            content.append(types.TextContent(type="text", text=f"Job {job.id} {job.status}. {error}".strip()))
        else:
            content.append(
                types.TextContent(
                    type="text",
                    text=f"Job {job.id} is {job.status}; it goes on. Call get_job with job_id={job.id!r} to follow it.",
                )
            )
        return types.CallToolResult(
            content=content, structured_content=view, is_error=job.status in ("failed", "canceled")
        )

    async def _output_content(self, request: Request, output: Output) -> Any:
        state = self._state()
        if output.content_type.startswith("image/") and output.size <= state.settings.mcp_inline_image_bytes:
            return types.ImageContent(
                type="image", data=await doors.output_b64(request, output), mime_type=output.content_type
            )
        view = output_view(output, state.signer)
        return types.ResourceLink(
            type="resource_link",
            name=output.filename,
            uri=doors.absolute_url(request, view["url"]),
            mime_type=output.content_type,
            size=output.size,
        )


async def _templates(session: AsyncSession) -> list[Template]:
    return await templates.all_by_name(session)
