"""Copying a finished prompt's files from ComfyUI (`/view`) into the gateway's storage."""

from __future__ import annotations

import mimetypes
import uuid
from collections.abc import AsyncIterator
from pathlib import PurePosixPath

from app.comfy.client import ComfyClient
from app.comfy.models import HistoryEntry, OutputFile
from app.db.models import Output
from app.dispatch.backend import OutputSpec
from app.storage.base import Storage

# The types of the files ComfyUI's output nodes write, by extension: SaveImage (png),
# SaveAnimatedWEBP/PNG (webp, png), SaveWEBM and SaveVideo (webm, mp4), SaveAudio/MP3/Opus (flac,
# mp3, opus), SaveGLB (glb), VHS_VideoCombine's `gifs` (gif, mp4, webm). Python's own table lacks
# some of them on some platforms, and /view answers by extension too.
CONTENT_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif",
    ".svg": "image/svg+xml", ".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime",
    ".mkv": "video/x-matroska", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".opus": "audio/ogg",
    ".ogg": "audio/ogg", ".wav": "audio/wav", ".glb": "model/gltf-binary", ".txt": "text/plain",
    ".json": "application/json", ".latent": "application/octet-stream",
}  # fmt: skip


def wanted_files(job: OutputSpec, entry: HistoryEntry) -> list[OutputFile]:
    """The files the job returns from its output nodes: saved outputs, and `temp` previews too
    when its template has `keep_temp`."""
    nodes = set(job.output_nodes or ())
    types = {"output", "temp"} if job.keep_temp else {"output"}
    return [f for f in entry.output_files() if f.type in types and (not nodes or f.node_id in nodes)]


def wanted_texts(job: OutputSpec, entry: HistoryEntry) -> list[tuple[str, str, str]]:
    """Text outputs (e.g. PreviewAny's `text`) of the job's output nodes: `(node_id, key, text)`."""
    nodes = set(job.output_nodes or ())
    return [t for t in entry.texts() if not nodes or t[0] in nodes]


def _content_type(filename: str, served: str | None) -> str:
    known = CONTENT_TYPES.get(PurePosixPath(filename).suffix.lower())
    if known:
        return known
    served = (served or "").split(";")[0].strip().lower()
    if served and served != "application/octet-stream":
        return served
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


class OutputTooLarge(Exception):
    """The job's outputs came to more than GATEWAY_MAX_JOB_OUTPUT_BYTES."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"outputs over {limit} bytes")
        self.limit = limit


class _Budget:
    """The bytes a job may still store: a file that would overrun it is cut off as it streams."""

    def __init__(self, limit: int | None) -> None:
        self.limit, self.used = limit, 0

    async def through(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.used += len(chunk)
            if self.limit is not None and self.used > self.limit:
                raise OutputTooLarge(self.limit)
            yield chunk


async def collect(
    client: ComfyClient, storage: Storage, job: OutputSpec, entry: HistoryEntry, max_bytes: int | None = None
) -> list[Output]:
    """Stream every wanted file into storage. On any failure, what was already stored is removed;
    past `max_bytes` in all, OutputTooLarge."""
    stored: list[Output] = []
    budget = _Budget(max_bytes)
    try:
        for f in wanted_files(job, entry):
            output_id = str(uuid.uuid4())
            suffix = PurePosixPath(f.filename).suffix.lower()[:10]
            key = f"{job.id}/{output_id}{suffix}"
            async with client.view(f.filename, f.subfolder, f.type) as resp:
                obj = await storage.write_stream(key, budget.through(resp.aiter_bytes()))
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
        for index, (node_id, key, text) in enumerate(wanted_texts(job, entry)):
            output_id = str(uuid.uuid4())
            storage_key = f"{job.id}/{output_id}.txt"
            obj = await storage.write_stream(storage_key, budget.through(_one(text.encode("utf-8"))))
            stored.append(
                Output(
                    id=output_id,
                    job_id=job.id,
                    node_id=str(node_id),
                    kind=key,
                    filename=f"{key}_{node_id}_{index + 1}.txt",
                    content_type="text/plain; charset=utf-8",
                    size=obj.size,
                    sha256=obj.sha256,
                    storage_key=storage_key,
                )
            )
    except BaseException:
        for out in stored:
            await storage.delete(out.storage_key)
        raise
    return stored
