"""Async REST client for one ComfyUI server.

Every method maps failures onto `app.comfy.errors`, so callers only need to know one rule:
`BackendUnavailable` means "try again later", everything else is final. Answers are parsed into
the dataclasses of `app.comfy.models`, whose shapes follow tests/data/recordings/.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx

from ._multipart import MultipartForm
from ._wire import Answer, Streamed, Wire
from .errors import BackendUnavailable, ComfyError, NotFound, PromptRejected
from .models import (
    HistoryEntry,
    OutputFile,
    QueuedPrompt,
    QueueItem,
    QueueState,
    UploadedFile,
    ViewResponse,
)

__all__ = [
    "ComfyClient",
    "HistoryEntry",
    "OutputFile",
    "QueueItem",
    "QueueState",
    "QueuedPrompt",
    "UploadedFile",
    "ViewResponse",
]

# Statuses that say "not now" rather than "never".
_TRANSIENT_4XX = {408, 425, 429}
# Statuses of POST /prompt that reject the prompt itself. ComfyUI uses 400; 413 (body over
# aiohttp's client_max_size) and 422 can come from ComfyUI or a proxy and are just as final.
_PROMPT_REJECTED = {400, 413, 422}
_ERROR_BODY_LIMIT = 4096


def _snippet(text: str) -> str:
    return text if len(text) <= 300 else text[:300] + "..."


class ComfyClient:
    """A typed async client for ComfyUI's HTTP API.

    `base_url` is the server root (`http://host:8188`, or a path prefix behind a proxy).
    Requests go over aiohttp (app/comfy/_wire.py: the same requests and errors at a fraction of
    httpx's CPU). `transport` lets tests plug in `httpx.MockTransport` instead (requests then go
    through httpx); `max_connections` bounds the pool (ignored when a transport is given). One
    client can be shared by many tasks.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 20,
        trust_env: bool = False,
        headers: dict[str, str] | None = None,
    ):
        """`headers`: sent with every request."""
        self.base_url = base_url.rstrip("/")
        # trust_env=False by default: ComfyUI backends are usually on a private network, and a
        # stray HTTP(S)_PROXY in the gateway's environment must not reroute them.
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            trust_env=trust_env,
            follow_redirects=False,
            headers=headers,
        )
        self._wire = (
            None
            if transport is not None
            else Wire(
                self.base_url,
                timeout=timeout,
                max_connections=max_connections,
                trust_env=trust_env,
                headers=headers,
            )
        )

    async def aclose(self) -> None:
        if self._wire is not None:
            await self._wire.aclose()
        await self._http.aclose()

    async def __aenter__(self) -> ComfyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"ComfyClient({self.base_url!r})"

    # ----------------------------------------------------------------------------------------
    # Plumbing

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response | Answer:
        """An answer with httpx.Response's `status_code`, `headers`, `text` and `json()`."""
        try:
            if self._wire is not None:
                return await self._wire.request(method, path, **kwargs)
            return await self._http.request(method, path, **kwargs)
        except httpx.UnsupportedProtocol as exc:
            raise ComfyError(f"{method} {path}: {exc}") from exc  # misconfigured base_url
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # The connection was never made, so the request cannot have had an effect.
            raise BackendUnavailable(
                f"{method} {path}: {type(exc).__name__}: {exc}", request_sent=False
            ) from exc
        except httpx.TimeoutException as exc:
            raise BackendUnavailable(f"{method} {path}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _raise_for_status(
        resp: httpx.Response | Answer | Streamed, what: str, text: str | None = None
    ) -> None:
        status = resp.status_code
        if status < 400:
            return
        body = text if text is not None else getattr(resp, "text", "")  # a Streamed answer passes its text
        message = f"{what}: HTTP {status}"
        if body:
            message += f": {_snippet(body)}"
        if status == 404:
            raise NotFound(message, status_code=status, body=body)
        if status >= 500 or status in _TRANSIENT_4XX:
            raise BackendUnavailable(message, status_code=status, body=body)
        raise ComfyError(message, status_code=status, body=body)

    @staticmethod
    def _json(resp: httpx.Response | Answer, what: str) -> Any:
        try:
            return resp.json()
        except ValueError as exc:
            raise BackendUnavailable(
                f"{what}: malformed JSON answer: {_snippet(resp.text)}",
                status_code=resp.status_code,
                body=resp.text,
            ) from exc

    async def _get_json(self, path: str, **kwargs: Any) -> Any:
        resp = await self._request("GET", path, **kwargs)
        self._raise_for_status(resp, f"GET {path}")
        return self._json(resp, f"GET {path}")

    # ----------------------------------------------------------------------------------------
    # Prompts and queue

    async def queue_prompt(
        self,
        prompt: dict[str, Any],
        *,
        prompt_id: str,
        client_id: str | None,
        extra_data: dict[str, Any] | None = None,
    ) -> QueuedPrompt:
        """`POST /prompt`. The caller picks `prompt_id` (ComfyUI uses it as given), so after a
        timeout or a dropped connection — when the prompt may or may not have been queued — it
        can find out from `/queue` and `/history` instead of queueing twice.

        `client_id` routes the execution messages to that WebSocket; without it ComfyUI sends
        no `executing`/`executed`/`execution_*` (except `execution_interrupted`) to anyone.

        Raises `PromptRejected` when ComfyUI refuses the prompt (400 + validation errors).
        """
        body: dict[str, Any] = {"prompt": prompt, "prompt_id": prompt_id}
        if client_id is not None:
            body["client_id"] = client_id
        if extra_data:
            body["extra_data"] = extra_data
        resp = await self._request("POST", "/prompt", json=body)
        if resp.status_code in _PROMPT_REJECTED:
            raise self._prompt_rejected(resp)
        self._raise_for_status(resp, "POST /prompt")
        payload = self._json(resp, "POST /prompt")
        try:
            return QueuedPrompt.from_json(payload, prompt_id)
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendUnavailable(f"POST /prompt: unexpected answer: {_snippet(resp.text)}") from exc

    @staticmethod
    def _prompt_rejected(resp: httpx.Response | Answer) -> PromptRejected:
        """Build the error from ComfyUI's body (`{"error": {...}, "node_errors": {...}}`).
        Older ComfyUI versions sent `error` as a string and `node_errors` as a list; a proxy may
        send plain text. All of them still reject the prompt, so all become PromptRejected."""
        text = resp.text
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        error: Any = payload.get("error") if isinstance(payload, dict) else None
        node_errors: Any = payload.get("node_errors") if isinstance(payload, dict) else None
        if isinstance(error, str):
            error = {"type": error, "message": error, "details": "", "extra_info": {}}
        elif not isinstance(error, dict):
            error = {
                "type": f"http_{resp.status_code}",
                "message": _snippet(text) or f"HTTP {resp.status_code}",
                "details": "",
                "extra_info": {},
            }
        if not isinstance(node_errors, dict):
            node_errors = {}
        return PromptRejected(resp.status_code, error, node_errors, body=text)

    async def get_history(self, prompt_id: str) -> HistoryEntry | None:
        """`GET /history/{prompt_id}`; None while the prompt is queued/running or unknown
        (ComfyUI answers `{}` for both)."""
        path = f"/history/{quote(prompt_id, safe='')}"
        payload = await self._get_json(path)
        if not isinstance(payload, dict):
            raise BackendUnavailable(f"GET {path}: unexpected answer: {_snippet(str(payload))}")
        if not payload:
            return None
        entry = payload.get(prompt_id)
        if entry is None and len(payload) == 1:
            entry = next(iter(payload.values()))
        if entry is None:
            return None
        try:
            return HistoryEntry.from_json(prompt_id, entry)
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendUnavailable(f"GET {path}: unexpected answer: {exc}") from exc

    async def get_queue(self) -> QueueState:
        """`GET /queue`: the running prompt(s) and the pending ones, pending sorted by number."""
        payload = await self._get_json("/queue")
        try:
            return QueueState.from_json(payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendUnavailable(f"GET /queue: unexpected answer: {exc}") from exc

    async def delete_from_queue(self, prompt_ids: list[str]) -> None:
        """`POST /queue {"delete": [...]}`: drop pending prompts. A running prompt is not
        stopped by this (use `interrupt`), and unknown ids are ignored by ComfyUI."""
        if not prompt_ids:
            return
        resp = await self._request("POST", "/queue", json={"delete": list(prompt_ids)})
        self._raise_for_status(resp, "POST /queue")

    async def interrupt(self, prompt_id: str) -> None:
        """`POST /interrupt {"prompt_id": ...}`: interrupt that prompt if, and only if, it is the
        one running. Never sent without a prompt id: a bare `/interrupt` stops whatever is
        running, which on a shared backend may be somebody else's job."""
        if not prompt_id:
            raise ValueError("interrupt() needs a prompt_id; untargeted interrupts are not allowed")
        resp = await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})
        self._raise_for_status(resp, "POST /interrupt")

    # ----------------------------------------------------------------------------------------
    # Files

    @contextlib.asynccontextmanager
    async def view(
        self, filename: str, subfolder: str = "", type: str = "output"
    ) -> AsyncIterator[ViewResponse]:
        """`GET /view`, streamed:

            async with client.view(f.filename, f.subfolder, f.type) as resp:
                async for chunk in resp.aiter_bytes():
                    ...

        Raises `NotFound` on 404 when entering. The connection is released on exit.
        """
        params = {"filename": filename, "subfolder": subfolder, "type": type}
        try:
            if self._wire is not None:
                resp: Any = await self._wire.stream("GET", "/view", params=params)
            else:
                resp = await self._http.send(
                    self._http.build_request("GET", "/view", params=params), stream=True
                )
        except httpx.TimeoutException as exc:
            raise BackendUnavailable(f"GET /view: timed out ({_type_name(exc)})") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"GET /view: {_type_name(exc)}: {exc}") from exc
        try:
            if resp.status_code >= 400:
                text = await _read_limited(resp)
                self._raise_for_status(resp, f"GET /view {filename!r}", text)
            length = resp.headers.get("content-length")

            async def chunks(chunk_size: int | None) -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.aiter_bytes(chunk_size):
                        yield chunk
                except httpx.TimeoutException as exc:
                    raise BackendUnavailable(
                        f"GET /view: timed out while streaming ({_type_name(exc)})"
                    ) from exc
                except httpx.TransportError as exc:
                    raise BackendUnavailable(f"GET /view: {_type_name(exc)} while streaming: {exc}") from exc

            yield ViewResponse(
                content_type=resp.headers.get("content-type", "application/octet-stream"),
                content_length=int(length) if length and length.isdigit() else None,
                chunks=chunks,
                headers=dict(resp.headers),
            )
        finally:
            await resp.aclose()

    async def upload_image(
        self,
        data: Any,
        filename: str,
        *,
        subfolder: str = "",
        type: str = "input",
        overwrite: bool = False,
        mask: bool = False,
        original_ref: dict[str, Any] | None = None,
        content_type: str | None = None,
    ) -> UploadedFile:
        """`POST /upload/image` (or `/upload/mask` when `mask`), streamed.

        `data` is bytes, a sync or async file-like object, or an (async) iterable of bytes.
        Without `overwrite` ComfyUI renames a clashing file (`name (1).png`): use the returned
        `name`. `/upload/mask` applies the upload's alpha to an existing image, which ComfyUI
        requires as `original_ref` (`{"filename", "subfolder", "type"}`).
        """
        if mask and original_ref is None:
            raise ValueError("mask uploads need original_ref: the image the mask applies to")
        fields = {"type": type, "subfolder": subfolder, "overwrite": "true" if overwrite else "false"}
        if original_ref is not None:
            fields["original_ref"] = json.dumps(original_ref)
        form = MultipartForm(fields, "image", filename, data, content_type)
        path = "/upload/mask" if mask else "/upload/image"
        resp = await self._request(
            "POST", path, content=form.body(), headers={"Content-Type": form.content_type}
        )
        self._raise_for_status(resp, f"POST {path}")
        payload = self._json(resp, f"POST {path}")
        try:
            return UploadedFile.from_json(payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendUnavailable(f"POST {path}: unexpected answer: {_snippet(resp.text)}") from exc

    # ----------------------------------------------------------------------------------------
    # Introspection

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """`GET /object_info[/{node_class}]`, as ComfyUI sends it: `{class_name: definition}`.
        An unknown class gives `{}` (ComfyUI answers 200 `{}`)."""
        path = "/object_info" if node_class is None else f"/object_info/{quote(node_class, safe='')}"
        payload = await self._get_json(path)
        if not isinstance(payload, dict):
            raise BackendUnavailable(f"GET {path}: expected an object")
        return payload

    async def system_stats(self) -> dict[str, Any]:
        """`GET /system_stats`: `{"system": {...versions...}, "devices": [...]}`."""
        payload = await self._get_json("/system_stats")
        if not isinstance(payload, dict):
            raise BackendUnavailable("GET /system_stats: expected an object")
        return payload


def _type_name(exc: BaseException) -> str:
    return type(exc).__name__


async def _read_limited(resp: httpx.Response | Streamed, limit: int = _ERROR_BODY_LIMIT) -> str:
    """Read at most `limit` bytes of an error body (it is only for the message)."""
    buf = bytearray()
    try:
        async for chunk in resp.aiter_bytes():
            buf += chunk
            if len(buf) >= limit:
                break
    except httpx.HTTPError:
        pass
    return bytes(buf[:limit]).decode("utf-8", errors="replace")
