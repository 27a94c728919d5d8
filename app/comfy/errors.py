"""Exceptions raised by the ComfyUI client.

The split matters to the caller more than the details do: a `BackendUnavailable` is transient
(the backend is down, slow, restarting or answering garbage), so a job should wait and retry,
possibly on another backend. A `PromptRejected` is final for that prompt: ComfyUI validated it and
said no, so retrying the same prompt would fail the same way. `NotFound` is final for the asked-for
resource. Anything else is a plain `ComfyError` (for example a 403 from a proxy in front of
ComfyUI), which is neither obviously transient nor the prompt's fault.
"""

from __future__ import annotations

from typing import Any


class ComfyError(Exception):
    """Base class of every error raised by `app.comfy`.

    `status_code` is the HTTP status when the error came from an HTTP answer, else None.
    `body` is the (possibly truncated) response text, for logs.
    """

    def __init__(self, message: str, *, status_code: int | None = None, body: str | None = None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body = body


class BackendUnavailable(ComfyError):
    """The backend could not be reached or answered with something unusable.

    Raised for refused connections, DNS failures, timeouts, dropped connections, 5xx, 408/429 and
    bodies that are not the JSON ComfyUI sends. Transient: wait and retry.

    `request_sent` is False only when the request certainly never reached the server (the
    connection could not be made): only then is it safe to assume a POST had no effect.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: str | None = None,
        request_sent: bool = True,
    ):
        super().__init__(message, status_code=status_code, body=body)
        self.request_sent = request_sent


class PromptRejected(ComfyError):
    """`POST /prompt` refused the prompt (HTTP 400 with ComfyUI's validation error body).

    `error` is ComfyUI's `error` object (`type`, `message`, `details`, `extra_info`) and
    `node_errors` maps node ids to `{"errors": [...], "dependent_outputs": [...], "class_type"}`.
    See tests/data/recordings/errors_prompt_400.json for every shape recorded.
    """

    def __init__(
        self,
        status_code: int,
        error: dict[str, Any],
        node_errors: dict[str, Any] | None = None,
        *,
        body: str | None = None,
    ):
        message = str(error.get("message") or error.get("type") or "prompt rejected")
        details = error.get("details")
        if details:
            message = f"{message}: {details}"
        super().__init__(message, status_code=status_code, body=body)
        self.error: dict[str, Any] = error
        self.node_errors: dict[str, Any] = node_errors or {}

    @property
    def error_type(self) -> str | None:
        """ComfyUI's machine-readable error type, e.g. `prompt_outputs_failed_validation`."""
        value = self.error.get("type")
        return value if isinstance(value, str) else None


class NotFound(ComfyError):
    """The resource does not exist (HTTP 404), e.g. `/view` of a missing file."""
