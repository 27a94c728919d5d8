"""A typed async client for ComfyUI servers (REST over httpx, `/ws` over websockets).

Self-contained on purpose: nothing here imports from the rest of `app`, so it could ship as a
library. Behaviour follows the recordings of a real ComfyUI in tests/data/recordings/.
"""

from .client import ComfyClient
from .errors import BackendUnavailable, ComfyError, NotFound, PromptRejected
from .messages import (
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    FeatureFlags,
    Message,
    NodeProgress,
    Preview,
    Progress,
    ProgressState,
    ProgressText,
    Status,
    Unknown,
    parse_binary,
    parse_event,
    parse_text,
)
from .models import (
    HistoryEntry,
    OutputFile,
    QueuedPrompt,
    QueueItem,
    QueueState,
    UploadedFile,
    ViewResponse,
)
from .websocket import DEFAULT_FEATURE_FLAGS, ComfyWebSocket, Connected, Disconnected, Event, websocket_url

__all__ = [
    "DEFAULT_FEATURE_FLAGS",
    "BackendUnavailable",
    "ComfyClient",
    "ComfyError",
    "ComfyWebSocket",
    "Connected",
    "Disconnected",
    "Event",
    "Executed",
    "Executing",
    "ExecutionCached",
    "ExecutionError",
    "ExecutionInterrupted",
    "ExecutionStart",
    "ExecutionSuccess",
    "FeatureFlags",
    "HistoryEntry",
    "Message",
    "NodeProgress",
    "NotFound",
    "OutputFile",
    "Preview",
    "Progress",
    "ProgressState",
    "ProgressText",
    "PromptRejected",
    "QueueItem",
    "QueueState",
    "QueuedPrompt",
    "Status",
    "Unknown",
    "UploadedFile",
    "ViewResponse",
    "parse_binary",
    "parse_event",
    "parse_text",
    "websocket_url",
]
