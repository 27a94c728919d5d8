"""The ComfyClient's requests over aiohttp's connection pool, without httpx on the way.

Per request, httpx (its client, then httpcore over anyio) cost about 1.5-1.8 ms of CPU against a
local server, three times a job (POST /prompt, GET /history, GET /view): more than anything else
the gateway does for a job but the database. aiohttp's client does the same wire work for about a
sixth of that. `ComfyClient` keeps its interface and its errors: answers here have the few
attributes of `httpx.Response` it reads (`status_code`, `headers`, `text`, `json()`,
`aiter_bytes()`, `aclose()`), and aiohttp's failures are raised as the httpx exceptions httpcore
would have raised, so the client maps them onto `app.comfy.errors` exactly as before:
- no connection made (refused, DNS) -> `ConnectError`; none in time -> `ConnectTimeout` (both:
  the request was never sent);
- no answer in time -> `ReadTimeout`; a lost connection or a malformed answer -> `ReadError` /
  `RemoteProtocolError`; a scheme other than http(s) -> `UnsupportedProtocol`.
`ComfyClient(transport=...)` (tests' `httpx.MockTransport`) still goes through httpx.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import httpx
from yarl import URL

_CHUNK = 64 * 1024


def _map_error(exc: BaseException) -> httpx.TransportError:
    """The httpx exception httpcore would have raised for this aiohttp failure."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(text)
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(text)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(text)
    if isinstance(exc, (aiohttp.ClientResponseError, aiohttp.ClientPayloadError)):
        return httpx.RemoteProtocolError(text)
    return httpx.ReadError(text)


class Answer:
    """A whole answer: what ComfyClient reads of an `httpx.Response`."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode(_charset(self.headers), errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class Streamed:
    """An answer whose body is read as it arrives (GET /view)."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status_code = resp.status
        # As httpx gives them to dict(): lower-case names.
        self.headers = {k.lower(): v for k, v in resp.headers.items()}

    async def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_chunked(chunk_size or _CHUNK):
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_error(exc) from exc

    async def aclose(self) -> None:
        if self._resp.content.at_eof():
            self._resp.release()  # back to the pool
        else:
            self._resp.close()  # the rest is unread: the connection cannot be reused


class _Source:
    """A streamed request body. aiohttp reports an error raised while producing the body as a
    connection error; this keeps the original, which is what the caller must see."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.error: BaseException | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except Exception as exc:
            self.error = exc
            raise


class Wire:
    """One aiohttp session for one backend (its pool bounded to `max_connections`), made on first
    use because aiohttp binds it to the running loop. `timeout` bounds connecting and each wait
    for data, as httpx's did; nothing bounds a whole exchange (a long /view keeps streaming)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        max_connections: int,
        trust_env: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._base = base_url
        # Sent with every request (e.g. the replica's name), as httpx's client `headers`.
        self._headers = dict(headers or {})
        self._scheme_ok = base_url.startswith(("http://", "https://"))
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
        )
        self._max_connections = max_connections
        self._trust_env = trust_env
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                auto_decompress=True,
                trust_env=self._trust_env,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers=self._headers,
                timeout=self._timeout,
            )
        return self._session

    async def _open(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[aiohttp.ClientResponse, _Source | None]:
        if not self._scheme_ok:
            raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol: {self._base}{path}")
        url = self._base + path
        if params:
            url += "?" + urlencode(params, quote_via=quote)
        body: Any = content
        source = None
        if json is not None:
            body = _dumps(json)
            headers = {**(headers or {}), "Content-Type": "application/json"}
        elif content is not None and not isinstance(content, (bytes, str)):
            body = source = _Source(content)
        try:
            resp = await self._get_session().request(
                method, URL(url, encoded=True), data=body, headers=headers, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            if source is not None and source.error is not None:
                raise source.error from None  # the caller's body failed, not the wire
            raise _map_error(exc) from exc
        return resp, source

    async def request(self, method: str, path: str, **kwargs: Any) -> Answer:
        resp, _ = await self._open(method, path, **kwargs)
        try:
            content = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _map_error(exc) from exc
        finally:
            resp.release()
        return Answer(resp.status, resp.headers, content)

    async def stream(self, method: str, path: str, **kwargs: Any) -> Streamed:
        resp, _ = await self._open(method, path, **kwargs)
        return Streamed(resp)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _dumps(value: Any) -> bytes:
    # As httpx serialized `json=`: compact, UTF-8, no NaN (ValueError before anything is sent).
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _charset(headers: Mapping[str, str]) -> str:
    content_type = headers.get("content-type") or headers.get("Content-Type") or ""
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            try:
                "".encode(value.strip('"'))
            except LookupError:
                break
            return value.strip('"')
    return "utf-8"
