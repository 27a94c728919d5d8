"""The input files a job stages onto its backend before its prompt is sent: one typed record, made
by the three doors that accept files (/v1 template params, /v1 raw workflows' `upload:<id>`, /api/v2
assets), stored as JSON in `jobs.inputs`, read back by app/dispatch/staging.py."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class StoredFile(Protocol):
    """An upload or an asset: a file of the user's in the gateway's storage."""

    id: str
    storage_key: str
    content_type: str


@dataclass(frozen=True, slots=True)
class StagedInput:
    # The name the staged file is made from (a template's param, or `<node id>_<input name>`).
    param: str
    upload_id: str
    storage_key: str
    content_type: str
    # Where the staged file's name goes: (node id, input name) pairs of the workflow.
    binds: tuple[tuple[str, str], ...]
    # A mask names the param of the image it applies to (staged first, with ComfyUI's /upload/mask).
    mask_of: str | None = None

    @classmethod
    def of(
        cls, param: str, file: StoredFile, binds: Iterable[Sequence[str]], mask_of: str | None = None
    ) -> StagedInput:
        return cls(
            param=param,
            upload_id=file.id,
            storage_key=file.storage_key,
            content_type=file.content_type,
            binds=tuple((node_id, name) for node_id, name in binds),
            mask_of=mask_of,
        )

    def to_json(self) -> dict[str, Any]:
        """As `jobs.inputs` stores it."""
        return {
            "param": self.param,
            "upload_id": self.upload_id,
            "storage_key": self.storage_key,
            "content_type": self.content_type,
            "binds": [list(b) for b in self.binds],
            "mask_of": self.mask_of,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StagedInput:
        return cls(
            param=data["param"],
            upload_id=data.get("upload_id", ""),
            storage_key=data["storage_key"],
            content_type=data.get("content_type") or "image/png",
            binds=tuple((node_id, name) for node_id, name in data["binds"]),
            mask_of=data.get("mask_of"),
        )


def stored(inputs: Iterable[StagedInput]) -> list[dict[str, Any]]:
    """The value of `jobs.inputs`: masks after the image they apply to."""
    return [i.to_json() for i in sorted(inputs, key=lambda i: i.mask_of is not None)]
