"""Typed ComfyUI WebSocket messages and their parsers.

ComfyUI sends two kinds of frame on `/ws` (see tests/data/recordings/README.md, which was
recorded from a real server):

* text frames: JSON `{"type": ..., "data": {...}}`;
* binary frames: a 4-byte big-endian event type, then an event-specific payload:
  - 1 `PREVIEW_IMAGE`: 4-byte image type (1 = JPEG, 2 = PNG), then the image;
  - 3 `TEXT`: 4-byte node-id length, the node id, then UTF-8 text;
  - 4 `PREVIEW_IMAGE_WITH_METADATA`: 4-byte metadata length, JSON metadata, then the image
    (sent instead of 1 to sockets that announced `supports_preview_metadata`).

`parse_text` and `parse_binary` never raise: the socket is fed by another process that may be
a newer ComfyUI, a custom node, or a broken proxy, and one odd frame must not take down the job
tracking built on top of it. Anything not understood becomes `Unknown`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = [
    "BINARY_PREVIEW_IMAGE",
    "BINARY_PREVIEW_IMAGE_WITH_METADATA",
    "BINARY_TEXT",
    "Executed",
    "Executing",
    "ExecutionCached",
    "ExecutionError",
    "ExecutionInterrupted",
    "ExecutionStart",
    "ExecutionSuccess",
    "FeatureFlags",
    "Message",
    "NodeProgress",
    "Preview",
    "Progress",
    "ProgressState",
    "ProgressText",
    "Status",
    "Unknown",
    "parse_binary",
    "parse_event",
    "parse_text",
]

BINARY_PREVIEW_IMAGE = 1
BINARY_TEXT = 3
BINARY_PREVIEW_IMAGE_WITH_METADATA = 4

#: Image type codes of binary event 1 (ComfyUI's `server.send_image`).
IMAGE_TYPES: dict[int, str] = {1: "image/jpeg", 2: "image/png"}


class _Malformed(Exception):
    """Internal: a known message type whose data does not have the expected shape."""


# --------------------------------------------------------------------------------------------
# Message classes


@dataclass(frozen=True, slots=True)
class Status:
    """`status`: sent to every socket on connect (with `sid`) and whenever the queue changes."""

    queue_remaining: int | None
    sid: str | None = None


@dataclass(frozen=True, slots=True)
class ExecutionStart:
    prompt_id: str | None
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class ExecutionCached:
    """The nodes whose outputs were reused from cache; they get no `executing`."""

    prompt_id: str | None
    nodes: list[str]
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class Executing:
    """A node started. `node is None` means the prompt finished (sent only when the prompt had
    a `client_id`). Right after a reconnect ComfyUI re-sends this with only `node`, so
    `prompt_id` can be None."""

    prompt_id: str | None
    node: str | None
    display_node: str | None = None

    @property
    def finished(self) -> bool:
        return self.node is None


@dataclass(frozen=True, slots=True)
class Executed:
    """An output node finished; `output` is its UI output, e.g. `{"images": [{filename...}]}`."""

    prompt_id: str | None
    node: str | None
    output: dict[str, Any]
    display_node: str | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    prompt_id: str | None
    node: str | None
    value: int
    max: int


@dataclass(frozen=True, slots=True)
class NodeProgress:
    node_id: str
    value: float
    max: float
    state: str  # "pending" | "running" | "finished" | "error" (as ComfyUI reports it)
    display_node_id: str | None = None
    parent_node_id: str | None = None
    real_node_id: str | None = None


@dataclass(frozen=True, slots=True)
class ProgressState:
    """The state of every node that is no longer pending."""

    prompt_id: str | None
    nodes: dict[str, NodeProgress]


@dataclass(frozen=True, slots=True)
class ExecutionSuccess:
    prompt_id: str | None
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class ExecutionError:
    prompt_id: str | None
    node_id: str | None
    node_type: str | None
    exception_type: str | None
    exception_message: str | None
    traceback: list[str] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    timestamp: int | None = None
    current_inputs: dict[str, Any] = field(default_factory=dict)
    current_outputs: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ExecutionInterrupted:
    prompt_id: str | None
    node_id: str | None
    node_type: str | None
    executed: list[str] = field(default_factory=list)
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class FeatureFlags:
    """The server's feature flags, sent in answer to ours."""

    flags: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Preview:
    """A preview image (binary event 1 or 4). `image_type` is a MIME type.

    Event 4 carries `metadata` (`node_id`, `prompt_id`, `display_node_id`, `parent_node_id`,
    `real_node_id`, `image_type`); event 1 carries none, so which prompt it belongs to is only
    known from context (the socket's running prompt).
    """

    event: int
    image_type: str
    image: bytes = field(repr=False)
    metadata: dict[str, Any] | None = None

    @property
    def prompt_id(self) -> str | None:
        value = (self.metadata or {}).get("prompt_id")
        return value if isinstance(value, str) else None

    @property
    def node_id(self) -> str | None:
        value = (self.metadata or {}).get("node_id")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class ProgressText:
    """Binary event 3: a progress text from a node (API nodes send these). ComfyUI does not say
    which prompt it belongs to, and broadcasts it when the node gives no target socket."""

    node_id: str
    text: str

    @property
    def prompt_id(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Unknown:
    """Anything not understood: an unknown text type (`type` is that type), a known type whose
    data is malformed, an unknown binary event (`type` = `"binary:<n>"`, `data` = payload bytes),
    or garbage (`type` = `"<invalid>"`, `data` = the raw frame)."""

    type: str
    data: Any


Message = Union[
    Status,
    ExecutionStart,
    ExecutionCached,
    Executing,
    Executed,
    Progress,
    ProgressState,
    ExecutionSuccess,
    ExecutionError,
    ExecutionInterrupted,
    FeatureFlags,
    Preview,
    ProgressText,
    Unknown,
]


# --------------------------------------------------------------------------------------------
# Field helpers: strict enough that the dataclass types hold, lenient about optional extras.


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # node ids are strings, but be kind to integer ids
    raise _Malformed(key)


def _opt_int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Malformed(key)
    return int(value)


def _req_number(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Malformed(key)
    return value


def _str_list(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Malformed("list")
    return [str(v) for v in value]


def _dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Malformed("dict")
    return value


# --------------------------------------------------------------------------------------------
# Text messages


def _status(d: dict[str, Any]) -> Status:
    status = _dict(d.get("status"))
    exec_info = _dict(status.get("exec_info"))
    return Status(queue_remaining=_opt_int(exec_info, "queue_remaining"), sid=_opt_str(d, "sid"))


def _node_progress(key: str, d: Any) -> NodeProgress:
    d = _dict(d)
    return NodeProgress(
        node_id=_opt_str(d, "node_id") or key,
        value=float(_req_number(d, "value")),
        max=float(_req_number(d, "max")),
        state=_opt_str(d, "state") or "",
        display_node_id=_opt_str(d, "display_node_id"),
        parent_node_id=_opt_str(d, "parent_node_id"),
        real_node_id=_opt_str(d, "real_node_id"),
    )


def _progress_state(d: dict[str, Any]) -> ProgressState:
    nodes = _dict(d.get("nodes"))
    return ProgressState(
        prompt_id=_opt_str(d, "prompt_id"),
        nodes={str(k): _node_progress(str(k), v) for k, v in nodes.items()},
    )


_TEXT_PARSERS: dict[str, Any] = {
    "status": _status,
    "execution_start": lambda d: ExecutionStart(_opt_str(d, "prompt_id"), _opt_int(d, "timestamp")),
    "execution_cached": lambda d: ExecutionCached(
        _opt_str(d, "prompt_id"), _str_list(d.get("nodes")), _opt_int(d, "timestamp")
    ),
    "executing": lambda d: Executing(
        _opt_str(d, "prompt_id"), _opt_str(d, "node"), _opt_str(d, "display_node")
    ),
    "executed": lambda d: Executed(
        _opt_str(d, "prompt_id"),
        _opt_str(d, "node"),
        _dict(d.get("output")),
        _opt_str(d, "display_node"),
    ),
    "progress": lambda d: Progress(
        _opt_str(d, "prompt_id"),
        _opt_str(d, "node"),
        int(_req_number(d, "value")),
        int(_req_number(d, "max")),
    ),
    "progress_state": _progress_state,
    "execution_success": lambda d: ExecutionSuccess(_opt_str(d, "prompt_id"), _opt_int(d, "timestamp")),
    "execution_error": lambda d: ExecutionError(
        prompt_id=_opt_str(d, "prompt_id"),
        node_id=_opt_str(d, "node_id"),
        node_type=_opt_str(d, "node_type"),
        exception_type=_opt_str(d, "exception_type"),
        exception_message=_opt_str(d, "exception_message"),
        traceback=_str_list(d.get("traceback")),
        executed=_str_list(d.get("executed")),
        timestamp=_opt_int(d, "timestamp"),
        current_inputs=_dict(d.get("current_inputs")),
        current_outputs=_str_list(d.get("current_outputs")),
    ),
    "execution_interrupted": lambda d: ExecutionInterrupted(
        prompt_id=_opt_str(d, "prompt_id"),
        node_id=_opt_str(d, "node_id"),
        node_type=_opt_str(d, "node_type"),
        executed=_str_list(d.get("executed")),
        timestamp=_opt_int(d, "timestamp"),
    ),
    "feature_flags": lambda d: FeatureFlags(dict(_dict(d))),
}


def parse_event(type_: str, data: Any) -> Message:
    """Build a message from an already-decoded `(type, data)` pair.

    Used for WebSocket text frames and for the `[type, data]` pairs in a history entry's
    `status.messages`. Never raises.
    """
    parser = _TEXT_PARSERS.get(type_) if isinstance(type_, str) else None
    if parser is None or not isinstance(data, dict):
        return Unknown(type=type_ if isinstance(type_, str) else "<invalid>", data=data)
    try:
        return parser(data)
    except Exception:  # noqa: BLE001 - malformed data must never escape
        return Unknown(type=type_, data=data)


def parse_text(raw: str | bytes) -> Message:
    """Parse one WebSocket text frame. Never raises."""
    try:
        obj = json.loads(raw)
    except Exception:  # noqa: BLE001 - ValueError, UnicodeDecodeError, RecursionError, ...
        return Unknown(type="<invalid>", data=raw)
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return Unknown(type="<invalid>", data=obj)
    return parse_event(obj["type"], obj.get("data"))


# --------------------------------------------------------------------------------------------
# Binary messages

_U32 = struct.Struct(">I")


def parse_binary(raw: bytes | bytearray | memoryview) -> Message:
    """Parse one WebSocket binary frame. Never raises."""
    try:
        raw = bytes(raw)
    except Exception:  # noqa: BLE001
        return Unknown(type="<invalid>", data=raw)
    if len(raw) < 4:
        return Unknown(type="<invalid>", data=raw)
    (event,) = _U32.unpack_from(raw, 0)
    payload = raw[4:]
    try:
        if event == BINARY_PREVIEW_IMAGE:
            (code,) = _U32.unpack_from(payload, 0)
            return Preview(
                event=event,
                image_type=IMAGE_TYPES.get(code, "application/octet-stream"),
                image=payload[4:],
                metadata=None,
            )
        if event == BINARY_PREVIEW_IMAGE_WITH_METADATA:
            (length,) = _U32.unpack_from(payload, 0)
            if 4 + length > len(payload):
                raise _Malformed("metadata length")
            metadata = json.loads(payload[4 : 4 + length].decode("utf-8"))
            if not isinstance(metadata, dict):
                raise _Malformed("metadata")
            image_type = metadata.get("image_type")
            return Preview(
                event=event,
                image_type=image_type if isinstance(image_type, str) else "application/octet-stream",
                image=payload[4 + length :],
                metadata=metadata,
            )
        if event == BINARY_TEXT:
            (length,) = _U32.unpack_from(payload, 0)
            if 4 + length > len(payload):
                raise _Malformed("node id length")
            node_id = payload[4 : 4 + length].decode("utf-8")
            text = payload[4 + length :].decode("utf-8", errors="replace")
            return ProgressText(node_id=node_id, text=text)
    except Exception:  # noqa: BLE001 - struct.error, UnicodeDecodeError, ValueError, ...
        pass
    return Unknown(type=f"binary:{event}", data=payload)
