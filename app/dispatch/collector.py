"""Copying a finished prompt's files from ComfyUI (`/view`) into the gateway's storage."""

from __future__ import annotations

import mimetypes
import uuid
from pathlib import PurePosixPath

from app.comfy.client import ComfyClient
from app.comfy.models import HistoryEntry, OutputFile
from app.db.models import Job, Output
from app.storage.local import LocalStorage


def wanted_files(job: Job, entry: HistoryEntry) -> list[OutputFile]:
    """The files the job returns: saved outputs (not `temp` previews) of its output nodes."""
    nodes = set(job.output_nodes or ())
    return [f for f in entry.output_files() if f.type == "output" and (not nodes or f.node_id in nodes)]


def _content_type(filename: str, served: str | None) -> str:
    served = (served or "").split(";")[0].strip().lower()
    if served and served != "application/octet-stream":
        return served
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


async def collect(client: ComfyClient, storage: LocalStorage, job: Job, entry: HistoryEntry) -> list[Output]:
    """Stream every wanted file into storage. On any failure, what was already stored is removed."""
    stored: list[Output] = []
    try:
        for f in wanted_files(job, entry):
            output_id = str(uuid.uuid4())
            suffix = PurePosixPath(f.filename).suffix.lower()[:10]
            key = f"{job.id}/{output_id}{suffix}"
            async with client.view(f.filename, f.subfolder, f.type) as resp:
                obj = await storage.write_stream(key, resp.aiter_bytes())
                content_type = _content_type(f.filename, resp.content_type)
            stored.append(
                Output(
                    id=output_id,
                    job_id=job.id,
                    node_id=str(f.node_id),
                    kind=f.kind,
                    filename=PurePosixPath(f.filename).name,
                    content_type=content_type,
                    size=obj.size,
                    sha256=obj.sha256,
                    storage_key=key,
                )
            )
    except BaseException:
        for out in stored:
            await storage.delete(out.storage_key)
        raise
    return stored
