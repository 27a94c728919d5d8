"""Staging a job's input images onto the backend that runs it, just before its POST /prompt.

Each input goes to ComfyUI's input folder under a name of its own, `gw_<job id>_<param>.<ext>`,
with `overwrite=true`: two users' `input.png` never meet, ComfyUI's rename-on-conflict never
applies, and a job sent again (to the same or another backend) stages again under the same name.
The name is then bound into a copy of the workflow. ComfyUI has no route to delete an input file
(its route list has /upload/image and /upload/mask, nothing that removes), so staged files stay
in the backend's input folder; the README says how operators clear them.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from app.comfy.client import ComfyClient
from app.domain.staged_inputs import StagedInput
from app.storage.base import Storage
from app.storage.images import EXTENSIONS

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class InputMissing(Exception):
    """An input's stored file is gone (its upload was deleted or expired)."""

    def __init__(self, param: str) -> None:
        super().__init__(param)
        self.param = param


def staged_name(job_id: str, param: str, content_type: str) -> str:
    return f"gw_{_UNSAFE.sub('_', job_id)}_{_UNSAFE.sub('_', param)}{EXTENSIONS.get(content_type, '.png')}"


async def stage(
    client: ComfyClient, storage: Storage, job_id: str, workflow: dict[str, Any], inputs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Upload every input (`jobs.inputs`, app/domain/staged_inputs.py) to the backend and return the
    workflow with their names bound.

    Raises InputMissing, or the client's errors (BackendUnavailable: nothing was queued)."""
    workflow = copy.deepcopy(workflow)
    names: dict[str, str] = {}
    for item in map(StagedInput.from_json, inputs):
        param, key, mask_of = item.param, item.storage_key, item.mask_of
        if not await storage.exists(key):
            raise InputMissing(param)
        name = staged_name(job_id, param, item.content_type)
        # Streamed from storage: an input is never held whole in memory.
        uploaded = await client.upload_image(
            storage.read_stream(key),
            name,
            overwrite=True,
            content_type=item.content_type,
            # /upload/mask writes the original image with this mask's alpha under the mask's name.
            mask=mask_of in names,
            original_ref={"filename": names[mask_of], "subfolder": "", "type": "input"}
            if mask_of in names
            else None,
        )
        names[param] = uploaded.name if not uploaded.subfolder else f"{uploaded.subfolder}/{uploaded.name}"
        for node_id, input_name in item.binds:
            node = workflow.get(node_id)
            if isinstance(node, dict) and isinstance(node.get("inputs"), dict):
                node["inputs"][input_name] = names[param]
    return workflow
