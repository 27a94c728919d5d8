"""Fault injection: failing and hanging jobs, and slow or failing HTTP responses.

Socket faults live in ws.SocketHub; process faults (restart, kill, revive) in emulator.Emulator.

A job that gets an injected fault (`fail_next`, `hang_next`) runs without the cache, so it
always has a node to fail or hang in, even when an identical prompt ran just before.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from http import HTTPStatus

from aiohttp import web

SAMPLER_CLASSES = frozenset(
    {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced", "HarnessSlowSampler"}
)


@dataclass(slots=True)
class JobFault:
    kind: str  # "fail" | "hang"
    message: str = ""


@dataclass(slots=True)
class _HttpError:
    prefix: str
    status: int
    remaining: int | None


@dataclass
class Faults:
    fail_next_count: int = 0
    fail_next_message: str = "emulator injected failure"
    hang_next_count: int = 0
    #: class_type -> [message, remaining runs or None for every run]
    fail_classes: dict[str, list[object]] = field(default_factory=dict)
    slow: dict[str, float] = field(default_factory=dict)
    errors: list[_HttpError] = field(default_factory=list)

    def clear(self) -> None:
        self.fail_next_count = 0
        self.hang_next_count = 0
        self.fail_classes.clear()
        self.slow.clear()
        self.errors.clear()

    # -- jobs ---------------------------------------------------------------------------------

    def take_job_fault(self) -> JobFault | None:
        """The fault for the job that starts now, if any (fail wins over hang)."""
        if self.fail_next_count > 0:
            self.fail_next_count -= 1
            return JobFault("fail", self.fail_next_message)
        if self.hang_next_count > 0:
            self.hang_next_count -= 1
            return JobFault("hang")
        return None

    def class_failure(self, class_type: str) -> str | None:
        entry = self.fail_classes.get(class_type)
        if entry is None:
            return None
        message, remaining = entry
        if remaining is not None:
            remaining = int(remaining) - 1  # type: ignore[call-overload]
            if remaining <= 0:
                del self.fail_classes[class_type]
            else:
                entry[1] = remaining
        return str(message)

    # -- HTTP ---------------------------------------------------------------------------------

    def set_slow(self, path_prefix: str, seconds: float) -> None:
        prefix = normalize_path(path_prefix)
        if seconds > 0:
            self.slow[prefix] = seconds
        else:
            self.slow.pop(prefix, None)

    def set_errors(self, path_prefix: str, status: int, count: int | None) -> None:
        prefix = normalize_path(path_prefix)
        self.errors = [e for e in self.errors if e.prefix != prefix]
        if count is None or count > 0:
            self.errors.append(_HttpError(prefix, status, count))

    def delay_for(self, path: str) -> float:
        return max((s for p, s in self.slow.items() if path.startswith(p)), default=0.0)

    def take_error(self, path: str) -> int | None:
        for e in self.errors:
            if path.startswith(e.prefix):
                if e.remaining is not None:
                    e.remaining -= 1
                    if e.remaining <= 0:
                        self.errors.remove(e)
                return e.status
        return None

    def middleware(self) -> web.middleware:  # type: ignore[valid-type]
        @web.middleware
        async def faults_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
            path = request.path
            if path.startswith("/emulator/") or (not self.slow and not self.errors):
                return await handler(request)
            path = normalize_path(path)
            delay = self.delay_for(path)
            if delay:
                await asyncio.sleep(delay)
            status = self.take_error(path)
            if status is not None:
                return error_response(status)
            return await handler(request)

        return faults_middleware


def normalize_path(path: str) -> str:
    """`/api/prompt` and `/prompt` are the same route: match faults without the prefix."""
    if not path.startswith("/"):
        path = "/" + path
    if path == "/api" or path.startswith("/api/"):
        path = path[4:] or "/"
    return path


def error_response(status: int) -> web.Response:
    """A plain-text error like aiohttp's own (ComfyUI's 500 says "Server got itself in trouble")."""
    if status == 500:
        text = "500 Internal Server Error\n\nServer got itself in trouble"
    else:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        text = f"{status}: {reason}"
    return web.Response(status=status, text=text)
