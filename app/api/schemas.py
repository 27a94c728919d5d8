"""Request bodies and response shapes of the public API (what /openapi.json documents)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str | None = Field(default=None, max_length=64, description="A registered template's name.")
    workflow: dict[str, Any] | None = Field(
        default=None, description="A ComfyUI API-format graph, for users allowed to send raw workflows."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="The template's params.")
    priority: int = Field(default=0, ge=0, le=1_000_000, description="Higher runs earlier within your share.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Echoed back untouched.")
    webhook: dict[str, Any] | None = Field(default=None, description="Not supported yet: rejected when sent.")


class Progress(BaseModel):
    value: float
    max: float
    node: str | None = None


class OutputOut(BaseModel):
    id: str
    node_id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    url: str


class JobError(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    message: str
    node_id: str | None = None
    node_type: str | None = None


class JobOut(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    template: str | None
    params: dict[str, Any]
    priority: int
    metadata: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None
    queue_position: int | None
    progress: Progress | None
    outputs: list[OutputOut]
    error: JobError | None
    attempts: int


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class TemplateSummary(BaseModel):
    name: str
    description: str | None
    params_schema: dict[str, Any]
    outputs: list[str]


class TemplateOut(TemplateSummary):
    workflow: dict[str, Any] | None = Field(default=None, description="Only for admins; absent otherwise.")


class TemplateList(BaseModel):
    items: list[TemplateSummary]
    next_cursor: str | None


class Usage(BaseModel):
    queued: int
    running: int


class MeOut(BaseModel):
    id: str
    name: str
    is_admin: bool
    limits: dict[str, Any]
    usage: Usage


class Problem(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str


PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}} for code in (401, 403, 404, 409, 422)
}
