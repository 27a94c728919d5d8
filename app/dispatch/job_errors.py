"""ComfyUI's errors, made fit for users: no tracebacks, no server paths, no echoed inputs."""

from __future__ import annotations

import re
from typing import Any

# An absolute POSIX or Windows path; only its last part (the file name) is kept.
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/:,;()\[\]]+)+[\\/]([^\s'\"\\/:,;()\[\]]+)")
_MAX_MESSAGE = 2000


def scrub(text: str | None) -> str:
    if not text:
        return ""
    return _PATH.sub(r"\1", str(text)).strip()[:_MAX_MESSAGE]


def execution_error(
    *, node_id: str | None, node_type: str | None, exception_type: str | None, message: str | None
) -> dict[str, Any]:
    text = scrub(message) or "The node failed."
    if exception_type:
        text = f"{exception_type.rsplit('.', 1)[-1]}: {text}"
    return {"type": "execution_error", "message": text, "node_id": node_id, "node_type": node_type}


def invalid_workflow(error: dict[str, Any] | None, node_errors: dict[str, Any] | None) -> dict[str, Any]:
    """A 400 from /prompt: ComfyUI's own reasons per node, minus `extra_info` (inputs and configs)."""
    error = error or {}
    cleaned: dict[str, Any] = {}
    for node_id, entry in (node_errors or {}).items():
        if not isinstance(entry, dict):
            continue
        cleaned[str(node_id)] = {
            "class_type": entry.get("class_type"),
            "errors": [
                {
                    "type": e.get("type"),
                    "message": scrub(e.get("message")),
                    "details": scrub(e.get("details")),
                }
                for e in entry.get("errors", [])
                if isinstance(e, dict)
            ],
        }
    message = scrub(error.get("message")) or "ComfyUI refused the workflow."
    if error.get("details"):
        message = f"{message}: {scrub(error.get('details'))}"
    first = next(iter(cleaned.items()), None)
    return {
        "type": "invalid_workflow",
        "message": message,
        "node_id": first[0] if first else None,
        "node_type": first[1]["class_type"] if first else None,
        "node_errors": cleaned,
    }


def interrupted() -> dict[str, Any]:
    return {
        "type": "interrupted",
        "message": "The job was interrupted on its backend by someone other than its owner.",
    }


def backend_lost(attempts: int) -> dict[str, Any]:
    return {
        "type": "backend_lost",
        "message": f"The job's backend lost it {attempts} time(s); the gateway gave up.",
        "attempts": attempts,
    }


def output_missing(filename: str) -> dict[str, Any]:
    return {
        "type": "output_missing",
        "message": f"ComfyUI reported output {scrub(filename)!r} but did not serve it.",
    }


def unsupported(missing: list[str]) -> dict[str, Any]:
    return {
        "type": "unsupported_workflow",
        "message": "No registered backend can run this workflow; every one lacks: "
        + "; ".join(missing[:10])
        + ".",
        "missing": missing[:50],
    }


def timeout(seconds: float) -> dict[str, Any]:
    return {
        "type": "timeout",
        "message": f"The job ran longer than its limit of {seconds:g} s and was interrupted on its backend.",
    }


def input_missing(param: str) -> dict[str, Any]:
    return {
        "type": "input_missing",
        "message": f"The input image of param {param!r} is no longer stored (deleted, or past retention); submit the job again with a new upload.",
    }


def staging_failed(message: str) -> dict[str, Any]:
    return {"type": "staging_failed", "message": "The backend refused an input image: " + scrub(message)}


def output_too_large(limit: int) -> dict[str, Any]:
    return {
        "type": "output_too_large",
        "message": f"The job's outputs came to more than {limit} bytes (GATEWAY_MAX_JOB_OUTPUT_BYTES); none were kept.",
        "limit": limit,
    }


def internal_error() -> dict[str, Any]:
    # Deliberately generic: the exception's text may hold server paths, other users' data or
    # internals; the operator finds it in the log under the job's id.
    return {
        "type": "internal_error",
        "message": "The gateway hit an unexpected error while handling this job, so it was stopped. "
        "The operator's log has the details under the job's id.",
    }
