"""Comfy API v2 submits: a raw API-format workflow whose file inputs name the caller's assets.

A v2 job is a row of the same `jobs` table as a /v1 job (one queue, one fairness, one set of
limits); what differs is only how the request is read. An asset is referenced as
`{"__type": "core/ASSET", "info": {"id": ...}}` in any input, or by the plain file name its owner
gave it in an input that loads a file (e.g. LoadImage's `image`); either way it is staged onto the
backend that runs the job, as a /v1 upload is (app/dispatch/staging.py).
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import v2_idempotency
from app.db.models import Asset, Job
from app.domain import assets, staged_inputs
from app.domain.errors import Forbidden, ValidationFailed
from app.domain.staged_inputs import StagedInput
from app.domain.users import Principal
from app.domain.v2_errors import V2Error
from app.domain.workflows import check_raw_workflow, upload_inputs

ASSET_TYPE = "core/ASSET"
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
_UI_KEYS = ("nodes", "links")
# Label keys are looked up inside the JSON column (SQLite's and PostgreSQL's JSON paths): a plain
# alphabet keeps a key the same thing in both.
KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,%d}$" % MAX_METADATA_KEY)


class KeyReused(Exception):
    """The submit's Idempotency-Key was already used (keys are single-use)."""


async def check_key_unused(session: AsyncSession, user_id: str, key: str) -> None:
    if await v2_idempotency.used(session, user_id, key):
        raise KeyReused


async def take_key(session: AsyncSession, user_id: str, key: str, job_id: str) -> None:
    """Bind the key to the job in the submit's transaction; KeyReused when a concurrent request
    bound it first (the caller rolls back)."""
    try:
        await v2_idempotency.take(session, user_id, key, job_id)
    except v2_idempotency.KeyTaken:
        raise KeyReused from None


def check_metadata(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise V2Error(
            422, "metadata_invalid", "metadata must be an object of string labels.", field="metadata"
        )
    if len(metadata) > MAX_METADATA_PAIRS:
        raise V2Error(
            422,
            "metadata_invalid",
            f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are accepted.",
            field="metadata",
        )
    for key, value in metadata.items():
        if not KEY_RE.match(key):
            raise V2Error(
                422,
                "metadata_invalid",
                f"metadata key {key[:80]!r} must be 1 to {MAX_METADATA_KEY} letters, digits or _ . : -",
                field=f"metadata.{key[:80]}",
            )
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            raise V2Error(
                422,
                "metadata_invalid",
                f"metadata[{key!r}] must be a string of at most {MAX_METADATA_VALUE} characters.",
                field=f"metadata.{key}",
            )
    return dict(metadata)


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and value.get("__type") == ASSET_TYPE


def _missing(node_id: str, name: str, message: str) -> V2Error:
    return V2Error(422, "missing_asset", message, node_id=node_id, input=name)


async def _resolve(
    session: AsyncSession,
    user_id: str,
    workflow: dict[str, Any],
    object_info: Mapping[str, Any] | None,
    settings: Settings,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(the workflow to store, a copy to check without the staged inputs, the inputs to stage)."""
    stored = copy.deepcopy(workflow)
    checked = copy.deepcopy(workflow)
    inputs: list[StagedInput] = []
    denied, allowed = set(settings.raw_workflow_deny_nodes), set(settings.raw_workflow_allow_nodes)
    for node_id, node in stored.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue  # the shape check names it
        if node.get("class_type") in denied or (allowed and node.get("class_type") not in allowed):
            continue  # refused as a node, whatever its inputs name
        file_inputs = upload_inputs(str(node.get("class_type")), object_info)
        for name, value in list(node["inputs"].items()):
            asset: Asset | None = None
            if _is_ref(value):
                info = value.get("info")
                asset_id = info.get("id") if isinstance(info, dict) else None
                if not isinstance(asset_id, str):
                    raise _missing(
                        node_id, name, f"Node {node_id} input {name!r}: a core/ASSET reference needs info.id."
                    )
                try:
                    found = await assets.get_owned(session, user_id, asset_id)
                except V2Error:
                    found = None
                if not isinstance(found, Asset):
                    raise _missing(
                        node_id, name, f"Node {node_id} input {name!r}: there is no asset {asset_id!r}."
                    )
                asset = found
            elif name in file_inputs and isinstance(value, str):
                asset = await assets.by_file_path(session, user_id, value)
                if asset is None:
                    raise _missing(
                        node_id, name, f"Node {node_id} input {name!r}: you have no asset named {value!r}."
                    )
            if asset is None:
                continue
            # Replaced by the staged file's name at each dispatch; until then, the name its owner knows.
            node["inputs"][name] = asset.file_path
            del checked[node_id]["inputs"][name]
            inputs.append(StagedInput.of(f"{node_id}_{name}", asset, [(node_id, name)]))
    return stored, checked, staged_inputs.stored(inputs)


async def build(
    session: AsyncSession,
    principal: Principal,
    workflow: Any,
    metadata: dict[str, str],
    settings: Settings,
    object_info: Mapping[str, Any] | None,
) -> Job:
    """Check a v2 submit and make its job (not yet added: app/domain/jobs.py `enqueue`)."""
    if not isinstance(workflow, dict):
        raise V2Error(
            422,
            "invalid_workflow",
            "workflow must be an API-format graph (an object of nodes).",
            field="workflow",
        )
    if all(k in workflow for k in _UI_KEYS) and isinstance(workflow.get("nodes"), list):
        raise V2Error(
            422,
            "workflow_format_ui",
            "The workflow is in ComfyUI's UI (save) format; export it in API format instead.",
            field="workflow",
        )
    if not (principal.unlimited or principal.is_admin or principal.limits.get("allow_raw_workflows")):
        raise Forbidden("Your account may not send raw workflows.")
    stored, checked, inputs = await _resolve(session, principal.user_id, workflow, object_info, settings)
    try:
        nodes = check_raw_workflow(checked, settings, object_info)
    except ValidationFailed as exc:
        raise V2Error(422, "invalid_workflow", exc.detail, **exc.extensions) from None
    return Job(
        id=str(uuid.uuid4()),
        user_id=principal.user_id,
        status="queued",
        template=None,
        params={},
        workflow=stored,
        output_nodes=nodes,
        inputs=inputs,
        keep_temp=False,
        priority=0,
        meta=metadata,
        attempts=0,
        cancel_requested=False,
        timeout_seconds=None,
    )
