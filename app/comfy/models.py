"""Typed views of ComfyUI's REST answers.

The `from_json` constructors raise `ValueError`/`TypeError`/`KeyError` on bodies that do not have
ComfyUI's shape; the client turns those into `BackendUnavailable` (a backend that answers garbage
is treated like one that does not answer).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from .messages import ExecutionError, parse_event

__all__ = [
    "HistoryEntry",
    "OutputFile",
    "QueueItem",
    "QueueState",
    "QueuedPrompt",
    "UploadedFile",
    "ViewResponse",
]


def _expect_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{what}: expected an object, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class QueuedPrompt:
    """The 200 answer of `POST /prompt`. `node_errors` can be non-empty even on success: ComfyUI
    queues a prompt when at least one output is valid and reports the invalid ones here."""

    prompt_id: str
    number: int
    node_errors: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: Any, fallback_prompt_id: str) -> QueuedPrompt:
        body = _expect_dict(body, "/prompt")
        number = body["number"]
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise TypeError("/prompt: number is not a number")
        prompt_id = body.get("prompt_id") or fallback_prompt_id
        node_errors = body.get("node_errors") or {}
        return cls(
            prompt_id=str(prompt_id), number=int(number), node_errors=_expect_dict(node_errors, "node_errors")
        )


@dataclass(frozen=True, slots=True)
class QueueItem:
    """One `/queue` entry: ComfyUI sends `[number, prompt_id, prompt, extra_data,
    outputs_to_execute]` (extra elements, if a newer version adds any, are ignored)."""

    number: int
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]

    @property
    def client_id(self) -> str | None:
        value = self.extra_data.get("client_id")
        return value if isinstance(value, str) else None

    @classmethod
    def from_json(cls, item: Any) -> QueueItem:
        if not isinstance(item, list) or len(item) < 2:
            raise TypeError("queue item: expected [number, prompt_id, ...]")
        number, prompt_id = item[0], item[1]
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise TypeError("queue item: number is not a number")
        if not isinstance(prompt_id, str):
            raise TypeError("queue item: prompt_id is not a string")
        prompt = item[2] if len(item) > 2 and isinstance(item[2], dict) else {}
        extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
        outputs = item[4] if len(item) > 4 and isinstance(item[4], list) else []
        return cls(int(number), prompt_id, prompt, extra, [str(o) for o in outputs])


@dataclass(frozen=True, slots=True)
class QueueState:
    """`GET /queue`. `pending` is sorted by queue number (ComfyUI returns its heap unordered)."""

    running: list[QueueItem]
    pending: list[QueueItem]

    def prompt_ids(self) -> set[str]:
        return {item.prompt_id for item in (*self.running, *self.pending)}

    def __contains__(self, prompt_id: object) -> bool:
        return any(item.prompt_id == prompt_id for item in (*self.running, *self.pending))

    @classmethod
    def from_json(cls, body: Any) -> QueueState:
        body = _expect_dict(body, "/queue")
        running_raw = body.get("queue_running") or []
        pending_raw = body.get("queue_pending") or []
        if not isinstance(running_raw, list) or not isinstance(pending_raw, list):
            raise TypeError("/queue: queue_running/queue_pending are not lists")
        running = [QueueItem.from_json(i) for i in running_raw]
        pending = sorted((QueueItem.from_json(i) for i in pending_raw), key=lambda i: i.number)
        return cls(running=running, pending=pending)


@dataclass(frozen=True, slots=True)
class OutputFile:
    """A file produced by an output node, addressable with `ComfyClient.view(filename,
    subfolder, type)`. `kind` is the output key it was listed under ("images", "gifs",
    "videos", "audio", ...). `type` is "output", "temp" (previews) or "input"."""

    node_id: str
    kind: str
    filename: str
    subfolder: str
    type: str


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One `/history/{prompt_id}` entry.

    ComfyUI only writes history when a prompt has ended, so an entry means "done" — but done
    can be success, error or interrupt. Note the recordings: an interrupted prompt has
    `status_str == "error"`, so use `interrupted` / `error()` to tell the two apart.
    """

    prompt_id: str
    status_str: str | None
    completed: bool
    outputs: dict[str, dict[str, Any]]
    messages: list[tuple[str, dict[str, Any]]]
    number: int | None = None
    prompt: dict[str, Any] = field(default_factory=dict)
    extra_data: dict[str, Any] = field(default_factory=dict)
    outputs_to_execute: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def succeeded_with(cls, prompt_id: str, outputs: dict[str, dict[str, Any]]) -> HistoryEntry:
        """The entry of a prompt that succeeded with these UI outputs (its `executed` messages),
        as /history would list it: for a caller that heard every message of the prompt."""
        return cls(prompt_id=prompt_id, status_str="success", completed=True, outputs=outputs, messages=[])

    @property
    def succeeded(self) -> bool:
        return self.status_str == "success" and not self.interrupted

    @property
    def interrupted(self) -> bool:
        return any(t == "execution_interrupted" for t, _ in self.messages)

    def error(self) -> ExecutionError | None:
        """The `execution_error` message of this prompt, if it failed with one."""
        for type_, data in self.messages:
            if type_ == "execution_error":
                msg = parse_event(type_, data)
                if isinstance(msg, ExecutionError):
                    return msg
        return None

    def output_files(self) -> list[OutputFile]:
        """Every file in every output node: each list value whose items are dicts with a
        `filename` (images, gifs, videos, audio, 3d, ... whatever the node calls the key)."""
        files: list[OutputFile] = []
        for node_id, node_output in self.outputs.items():
            if not isinstance(node_output, dict):
                continue
            for kind, value in node_output.items():
                if not isinstance(value, list):
                    continue
                for item in value:
                    if isinstance(item, dict) and isinstance(item.get("filename"), str):
                        files.append(
                            OutputFile(
                                node_id=str(node_id),
                                kind=str(kind),
                                filename=item["filename"],
                                subfolder=str(item.get("subfolder") or ""),
                                type=str(item.get("type") or "output"),
                            )
                        )
        return files

    def texts(self) -> list[tuple[str, str, str]]:
        """Every string output as `(node_id, key, text)`, e.g. `{"text": ["..."]}`."""
        texts: list[tuple[str, str, str]] = []
        for node_id, node_output in self.outputs.items():
            if not isinstance(node_output, dict):
                continue
            for key, value in node_output.items():
                values = value if isinstance(value, list) else [value]
                texts.extend((str(node_id), str(key), v) for v in values if isinstance(v, str))
        return texts

    @classmethod
    def from_json(cls, prompt_id: str, entry: Any) -> HistoryEntry:
        entry = _expect_dict(entry, "history entry")
        status = entry.get("status") or {}
        status = status if isinstance(status, dict) else {}
        messages: list[tuple[str, dict[str, Any]]] = []
        for m in status.get("messages") or []:
            if isinstance(m, (list, tuple)) and len(m) >= 2 and isinstance(m[0], str):
                messages.append((m[0], m[1] if isinstance(m[1], dict) else {}))
        outputs = entry.get("outputs") or {}
        outputs = {str(k): v for k, v in _expect_dict(outputs, "outputs").items() if isinstance(v, dict)}
        prompt = entry.get("prompt")
        prompt = prompt if isinstance(prompt, list) else []
        number = (
            prompt[0]
            if prompt and isinstance(prompt[0], (int, float)) and not isinstance(prompt[0], bool)
            else None
        )

        def at(i: int, kind: type, default: Callable[[], Any]) -> Any:
            return prompt[i] if len(prompt) > i and isinstance(prompt[i], kind) else default()

        status_str = status.get("status_str")
        meta = entry.get("meta")
        return cls(
            prompt_id=prompt_id,
            status_str=status_str if isinstance(status_str, str) else None,
            completed=bool(status.get("completed", False)),
            outputs=outputs,
            messages=messages,
            number=int(number) if number is not None else None,
            prompt=at(2, dict, dict),
            extra_data=at(3, dict, dict),
            outputs_to_execute=[str(o) for o in at(4, list, list)],
            meta=meta if isinstance(meta, dict) else {},
        )


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """The answer of `/upload/image` and `/upload/mask`. `name` may differ from the name sent:
    without overwrite ComfyUI renames a clash to `name (1).png`."""

    name: str
    subfolder: str
    type: str

    @classmethod
    def from_json(cls, body: Any) -> UploadedFile:
        body = _expect_dict(body, "/upload")
        name = body["name"]
        if not isinstance(name, str):
            raise TypeError("/upload: name is not a string")
        return cls(
            name=name, subfolder=str(body.get("subfolder") or ""), type=str(body.get("type") or "input")
        )

    @property
    def as_input_value(self) -> str:
        """The value LoadImage's `image` input expects: `subfolder/name` (plus ` [type]` when the
        file is not in the input folder)."""
        path = f"{self.subfolder}/{self.name}" if self.subfolder else self.name
        return path if self.type == "input" else f"{path} [{self.type}]"


class ViewResponse:
    """An open `/view` response. Read it with `aiter_bytes()`; the body is never held whole."""

    def __init__(
        self,
        content_type: str,
        content_length: int | None,
        chunks: Callable[[int | None], AsyncIterator[bytes]],
        headers: dict[str, str] | None = None,
    ):
        self.content_type = content_type
        self.content_length = content_length
        self.headers = headers or {}
        self._chunks = chunks

    def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        return self._chunks(chunk_size)

    def __repr__(self) -> str:
        return f"ViewResponse(content_type={self.content_type!r}, content_length={self.content_length!r})"
