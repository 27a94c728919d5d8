"""A ComfyUI `/ws` connection that survives drops.

ComfyUI's socket is the only place progress, previews and "node N finished" are reported, but it
is not durable: anything sent while the socket is down is lost (after a reconnect ComfyUI only
re-sends `executing` for the running node, without a prompt id). So this class does not try to
hide drops. It reconnects forever, and tells the consumer with `Disconnected` / `Connected` so
that it can reconcile what it missed from `/history` and `/queue`.

Dead connections are detected with WebSocket pings (no pong within `ping_timeout`) and, when
`stall_timeout` is set, with a watchdog on incoming messages. An idle ComfyUI sends nothing at
all (not even `status`), so only set `stall_timeout` above the longest silence you expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar, Union
from urllib.parse import quote, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .messages import Message, Status, parse_binary, parse_text

__all__ = [
    "DEFAULT_FEATURE_FLAGS",
    "ComfyWebSocket",
    "Connected",
    "Disconnected",
    "Event",
    "websocket_url",
]

logger = logging.getLogger(__name__)

#: What the current ComfyUI frontend (1.27) sends as its first frame. With it the server answers
#: with its own `feature_flags` and sends previews as binary event 4, which carry the prompt id
#: and node id (event 1 previews carry neither).
DEFAULT_FEATURE_FLAGS: dict[str, Any] = {"supports_preview_metadata": True}

#: A connection that lived this long counts as healthy: the next reconnect starts the backoff
#: from `backoff_initial` again instead of continuing to grow it.
STABLE_AFTER = 5.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Connected:
    """A connection is up. `sid` is the server's id for this socket (the client id, when one was
    given). `attempt` is how many tries this connection took (1 = first try). `is_reconnect` is
    False only for the first connection: on True, events may have been missed meanwhile."""

    sid: str | None
    attempt: int
    is_reconnect: bool = False


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection was lost (`reason` says how). Reconnection is already under way."""

    reason: str


Event = Union[Message, Connected, Disconnected]


class _Closed(Exception):
    """Internal: close() was called while waiting."""


def websocket_url(base_url: str, client_id: str | None) -> str:
    """`http(s)://host[/prefix]` -> `ws(s)://host[/prefix]/ws?clientId=...`."""
    parts = urlsplit(base_url.rstrip("/"))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"not an http(s) or ws(s) URL: {base_url!r}")
    path = parts.path if parts.path.endswith("/ws") else parts.path + "/ws"
    query = f"clientId={quote(client_id, safe='')}" if client_id else ""
    return urlunsplit((scheme, parts.netloc, path, query, ""))


class ComfyWebSocket:
    """One self-healing `/ws?clientId=...` connection. Iterate `events()` once, from one task;
    call `close()` (from anywhere) to stop it.

        ws = ComfyWebSocket("http://127.0.0.1:8188", client_id)
        async for event in ws.events():
            match event:
                case Connected(): ...      # (re)connected: reconcile from /history and /queue
                case Disconnected(): ...   # lost: events may be missed until the next Connected
                case Executing(prompt_id=pid, node=None): ...
    """

    def __init__(
        self,
        base_url: str,
        client_id: str,
        *,
        send_feature_flags: bool = True,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        ping_interval: float = 10.0,
        ping_timeout: float = 10.0,
        stall_timeout: float | None = None,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
        first_message_timeout: float = 2.0,
        feature_flags: dict[str, Any] | None = None,
        max_size: int | None = None,
        max_queue: int | None = 1024,
    ):
        self.url = websocket_url(base_url, client_id)
        self.client_id = client_id
        self.send_feature_flags = send_feature_flags
        self.feature_flags = dict(feature_flags if feature_flags is not None else DEFAULT_FEATURE_FLAGS)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.stall_timeout = stall_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.first_message_timeout = first_message_timeout
        # None = unlimited. The gateway always sets a bound (GATEWAY_BACKEND_WS_MAX_MESSAGE_BYTES):
        # a message over it closes the socket (1009), which then reconnects like any lost one.
        self.max_size = max_size
        # Frames buffered while the consumer is busy. When the buffer is full websockets stops
        # reading the socket, pongs go unread and the keepalive kills the connection, so keep
        # it roomy (ComfyUI sends a progress_state per node event) and keep consumers quick.
        self.max_queue = max_queue
        self.sid: str | None = None
        self._ws: ClientConnection | None = None
        self._closed = False
        self._closed_event = asyncio.Event()
        self._iterating = False

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Stop: closes the current connection and ends `events()` promptly. Idempotent."""
        self._closed = True
        self._closed_event.set()
        ws, self._ws = self._ws, None
        if ws is not None:
            await self._close_politely(ws)

    # ----------------------------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        """Exponential backoff with jitter, so that many gateways (or many sockets) that lost the
        same backend do not all hammer it at the same instant when it comes back."""
        delay = min(self.backoff_max, self.backoff_initial * (2 ** max(0, failures - 1)))
        return delay * random.uniform(0.5, 1.0)

    async def _until_closed(
        self, aw: Awaitable[T], closer: asyncio.Future[Any], timeout: float | None = None
    ) -> T:
        """Await `aw`, but give up when close() is called (raises `_Closed`) or after `timeout`
        (raises `TimeoutError`)."""
        task = asyncio.ensure_future(aw)
        try:
            done, _ = await asyncio.wait({task, closer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.wait({task})  # let it finish cancelling; does not raise its exception
        if not task.cancelled() and task.exception() is None:
            result = task.result()  # finished just before the cancel: do not leak a connection
            if isinstance(result, ClientConnection):
                self._abort(result)
        if closer in done:
            raise _Closed
        raise TimeoutError

    async def _sleep(self, delay: float, closer: asyncio.Future[Any]) -> None:
        """Sleep, waking early on close() (the caller checks `_closed` afterwards)."""
        with contextlib.suppress(_Closed, TimeoutError):
            await self._until_closed(asyncio.sleep(delay), closer, timeout=None)

    async def _connect(self) -> ClientConnection:
        return await connect(
            self.url,
            open_timeout=self.open_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=self.close_timeout,
            max_size=self.max_size,
            max_queue=self.max_queue,
            proxy=None,
            # No permessage-deflate: the messages are small JSON and already-compressed previews,
            # and deflating them cost CPU on both ends (ComfyUI's aiohttp accepts it if offered).
            compression=None,
        )

    async def _close_politely(self, ws: ClientConnection) -> None:
        try:
            await asyncio.wait_for(ws.close(), timeout=self.close_timeout + 1.0)
        except asyncio.CancelledError:
            self._abort(ws)
            raise
        except Exception:  # noqa: BLE001 - closing must not fail: drop the connection instead
            self._abort(ws)

    @staticmethod
    def _abort(ws: ClientConnection) -> None:
        """Drop a connection that is considered dead without a closing handshake, which a dead
        peer would never complete."""
        transport = getattr(ws, "transport", None)
        if transport is not None:
            transport.abort()

    @staticmethod
    def _parse(raw: str | bytes) -> Message:
        return parse_text(raw) if isinstance(raw, str) else parse_binary(raw)

    async def events(self) -> AsyncIterator[Event]:
        """Connect, reconnect and yield events until `close()`. Never raises because of the network or
        of a bad frame. The per-message loop stays inline (no sub-generator): one hop per message."""
        if self._iterating:
            raise RuntimeError("ComfyWebSocket.events() is already being iterated")
        self._iterating = True
        closer: asyncio.Future[Any] = asyncio.ensure_future(self._closed_event.wait())
        failures = 0  # consecutive failed attempts / short-lived connections
        attempts = 0  # tries since the last established connection
        connections = 0
        try:
            while not self._closed:
                attempts += 1
                try:
                    ws = await self._connect_or_back_off(closer, failures + 1)
                except _Closed:
                    return
                if ws is None:
                    failures += 1
                    continue
                if self._closed:
                    await self._close_politely(ws)
                    return
                self._ws = ws
                opened_at = asyncio.get_running_loop().time()
                reason: str | None = None
                try:
                    first = await self._first_message(ws, closer)
                    connections += 1
                    yield self._connected(first, attempts, connections)
                    attempts = 0
                    if first is not None:
                        yield first
                    while True:
                        # No task per message (as `_until_closed` would make): close() closes
                        # this connection, which ends the recv with ConnectionClosed.
                        try:
                            async with asyncio.timeout(self.stall_timeout):
                                raw = await ws.recv()
                        except TimeoutError:
                            reason = f"stalled: no message for {self.stall_timeout}s"
                            break
                        yield self._parse(raw)
                except _Closed:
                    return
                except ConnectionClosed as exc:
                    reason = _describe_close(exc)
                except Exception as exc:  # noqa: BLE001 - anything else on this connection
                    reason = f"{type(exc).__name__}: {exc}"
                finally:
                    await self._release(ws, reason)
                if self._closed:
                    return
                lived = asyncio.get_running_loop().time() - opened_at
                failures = 1 if lived >= STABLE_AFTER else failures + 1
                if connections and attempts == 0:
                    logger.warning("ComfyUI ws %s: disconnected (%s)", self.url, reason)
                    yield Disconnected(reason=reason or "connection lost")
                else:
                    logger.debug("ComfyUI ws %s: dropped before its first message (%s)", self.url, reason)
                await self._sleep(self._backoff(failures), closer)
        finally:
            self._end_iteration(closer)

    async def _connect_or_back_off(
        self, closer: asyncio.Future[Any], failures: int
    ) -> ClientConnection | None:
        """A new connection; or, if connecting fails, None after the backoff for the `failures`-th
        consecutive failure. Raises `_Closed` on close()."""
        try:
            return await self._until_closed(self._connect(), closer)
        except _Closed:
            raise
        except Exception as exc:  # noqa: BLE001 - refused, DNS, handshake, timeout, ...
            delay = self._backoff(failures)
            logger.debug(
                "ComfyUI ws %s: connect failed (%s: %s), retry in %.2fs",
                self.url,
                type(exc).__name__,
                exc,
                delay,
            )
            await self._sleep(delay, closer)
            return None

    async def _first_message(self, ws: ClientConnection, closer: asyncio.Future[Any]) -> Message | None:
        """Send our feature flags, then wait for the server's first frame (None if it says nothing in time)."""
        if self.send_feature_flags:
            await ws.send(json.dumps({"type": "feature_flags", "data": self.feature_flags}))
        # ComfyUI's first frame is `status` with the socket's `sid`: wait for it, so
        # that Connected can carry it. A connection that dies before saying anything
        # counts as a failed attempt, not as Connected + Disconnected.
        try:
            raw = await self._until_closed(ws.recv(), closer, timeout=self.first_message_timeout)
        except TimeoutError:
            return None
        return self._parse(raw)

    def _connected(self, first: Message | None, attempts: int, connections: int) -> Connected:
        """Note the socket's `sid` (from ComfyUI's first `status` frame) and announce the connection."""
        sid = first.sid if isinstance(first, Status) and first.sid else None
        self.sid = sid
        logger.info("ComfyUI ws %s: connected (sid=%s, attempt %d)", self.url, sid, attempts)
        return Connected(sid=sid, attempt=attempts, is_reconnect=connections > 1)

    async def _release(self, ws: ClientConnection, reason: str | None) -> None:
        """Forget a connection that ended: a stalled one is dropped, any other closed politely."""
        if self._ws is ws:
            self._ws = None
        if reason is not None and reason.startswith("stalled"):
            self._abort(ws)
        else:
            await self._close_politely(ws)

    def _end_iteration(self, closer: asyncio.Future[Any]) -> None:
        closer.cancel()
        self._iterating = False
        last, self._ws = self._ws, None
        if last is not None:
            self._abort(last)


def _describe_close(exc: ConnectionClosed) -> str:
    frame = exc.rcvd or exc.sent
    if frame is None:
        return "connection lost (no close frame)"
    who = "server" if exc.rcvd is not None else "client"
    text = f"closed by {who}: code {frame.code}"
    return f"{text} ({frame.reason})" if frame.reason else text
