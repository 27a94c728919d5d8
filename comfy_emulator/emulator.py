"""The Emulator: one emulated ComfyUI server, its lifecycle and its fault injection methods."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image

from .catalog import NodeCatalog
from .config import EmulatorConfig
from .control import control_routes
from .execution import ServerState
from .faults import Faults
from .files import Folders
from .parts import Parts
from .process import Process
from .server import build_app
from .validation import Validator
from .ws import SocketHub

logger = logging.getLogger(__name__)


class Emulator:
    """An emulated ComfyUI 0.3.64 server, running in the current asyncio loop.

    ```
    emu = Emulator(EmulatorConfig(step_seconds=0.01))
    await emu.start()            # host 127.0.0.1, a free port
    ... emu.base_url ...
    await emu.stop()
    ```
    Instances share nothing, so several can run side by side on different ports.
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.parts = Parts.build(self.config)
        self.process = Process(self.parts)
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._alive = False

    # -- the parts, for tests -----------------------------------------------------------------

    @property
    def folders(self) -> Folders:
        return self.parts.folders

    @property
    def catalog(self) -> NodeCatalog:
        return self.parts.catalog

    @property
    def validator(self) -> Validator:
        return self.parts.validator

    @property
    def hub(self) -> SocketHub:
        return self.parts.hub

    @property
    def faults(self) -> Faults:
        return self.parts.faults

    @property
    def prompt_senders(self) -> dict[str, str | None]:
        return self.parts.prompt_senders

    @property
    def prompts_received(self) -> list[str]:
        """Ids of the prompts `POST /prompt` accepted, in order (kept across restarts)."""
        return self.parts.prompts_received

    @property
    def executed_prompts(self) -> list[str]:
        """Ids of the prompts that started executing (cached or not), in order."""
        return self.parts.executed_prompts

    @property
    def interrupts(self) -> list[Any]:
        """The bodies of `POST /interrupt` (`{}` when there was none), in order."""
        return self.parts.interrupts

    @property
    def state(self) -> ServerState:
        """Queue, history, cache and the running job: what a restart loses."""
        return self.process.state

    @property
    def host(self) -> str:
        return self.process.host

    @property
    def port(self) -> int:
        return self.process.port

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT` (no trailing slash)."""
        return f"http://{self._netloc}"

    @property
    def ws_url(self) -> str:
        """`ws://HOST:PORT/ws` (add `?clientId=...`)."""
        return f"ws://{self._netloc}/ws"

    @property
    def input_dir(self) -> Path:
        return self.folders.input

    @property
    def output_dir(self) -> Path:
        return self.folders.output

    @property
    def temp_dir(self) -> Path:
        return self.folders.temp

    @property
    def alive(self) -> bool:
        """False between kill() and revive()."""
        return self._alive

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        self.process.host = host
        for folder in (self.folders.input, self.folders.output, self.folders.temp):
            folder.mkdir(parents=True, exist_ok=True)
        if self.config.example_input_image and not (self.folders.input / "example.png").exists():
            Image.new("RGB", (64, 64), (90, 120, 200)).save(self.folders.input / "example.png")
        self._runner = web.AppRunner(
            build_app(self.process, control_routes(self)),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=1.0,
        )
        await self._runner.setup()
        await self._listen(port)
        self._start_worker()

    async def stop(self) -> None:
        """Stops everything (sockets get a 1001 close frame, like a ComfyUI shut down with
        Ctrl-C) and removes the directories the emulator created itself."""
        self._alive = False
        self._stop_worker()
        try:
            await self.hub.close_all()
            for task in list(self._tasks):
                task.cancel()
            if self._runner is not None:
                runner, self._runner, self._site = self._runner, None, None
                await runner.cleanup()
        finally:
            self.folders.cleanup()

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        sock.setblocking(False)
        self.process.port = sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()
        self._alive = True

    def _start_worker(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self.state.worker())

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None

    def in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Runs coro as a task that stop() cancels (a task nobody holds could be collected)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lose_state(self) -> None:
        """What a process restart loses: queue, history, cache, the running job, temp files."""
        self._stop_worker()
        self.hub.drop_all(abrupt=True)
        self.folders.reset_process_state()
        self.process.state = ServerState(self.parts)

    async def restart(self) -> None:
        """Like a ComfyUI restart that takes no time: the running job, the queue, history and
        cache are gone, every socket is dropped, and the server keeps listening."""
        self._lose_state()
        self._start_worker()
        await asyncio.sleep(0)

    async def kill(self) -> None:
        """Stop listening and drop every connection: clients get "connection refused" until
        revive(). State is lost, as when the process dies."""
        if not self._alive:
            return
        self._alive = False
        self._lose_state()
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._runner is not None and self._runner.server is not None:
            for handler in self._runner.server.connections:
                transport = handler.transport
                if transport is not None:
                    transport.abort()

    async def revive(self) -> None:
        """Listen again on the same port, with a fresh state (as a restarted process)."""
        if self._alive or self._runner is None:
            return
        self.process.state = ServerState(self.parts)
        await self._listen(self.port)
        self._start_worker()

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until nothing is queued or running (for tests)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.state.queue.tasks_remaining():
            if loop.time() > deadline:
                raise TimeoutError("emulator still busy")
            await asyncio.sleep(0.005)

    # -- faults -------------------------------------------------------------------------------

    def set_models(self, folder: str, files: list[str]) -> None:
        """The model folder now holds these files (e.g. a checkpoint was added to a running server)."""
        self.catalog.set_models(folder, files)

    def fail_next(self, n: int = 1, message: str = "emulator injected failure") -> None:
        """The next `n` prompts to start fail at their first node with an `execution_error`
        (RuntimeError(message)). They run without the cache, so they always reach a node."""
        self.faults.fail_next_count = n
        self.faults.fail_next_message = message

    def fail_class(self, class_type: str, message: str | None = None, count: int | None = None) -> None:
        """Every run of a node class raises RuntimeError(message) (its next `count` runs only,
        when given). A cached node does not run, so it does not fail. count=0 clears it."""
        if count is not None and count <= 0:
            self.faults.fail_classes.pop(class_type, None)
            return
        self.faults.fail_classes[class_type] = [message or f"{class_type} failed (emulator fault)", count]

    def hang_next(self, n: int = 1) -> None:
        """The next `n` prompts hang in their first sampler node (or, without a sampler, in their
        first output node) until interrupted; they run without the cache."""
        self.faults.hang_next_count = n

    def drop_websockets(self, abrupt: bool = True) -> None:
        """Close every socket now: abruptly (TCP abort, the client sees 1006) or with a close
        frame (1001)."""
        self.hub.drop_all(abrupt=abrupt)

    def refuse_websockets(self, refuse: bool = True) -> None:
        """New `/ws` connections get HTTP 503 instead of the upgrade (open ones stay)."""
        self.hub.refuse = refuse

    def stall_websockets(self, stall: bool = True) -> None:
        """Sockets stay open but get nothing (it is delivered when unstalled) and pings get no
        pong."""
        self.hub.stall(stall)

    def slow_responses(self, path_prefix: str, seconds: float) -> None:
        """Delay HTTP requests whose path (without `/api`) starts with path_prefix; 0 clears."""
        self.faults.set_slow(path_prefix, seconds)

    def error_responses(self, path_prefix: str, status: int = 500, count: int | None = None) -> None:
        """Answer HTTP requests under path_prefix with `status` (plain text), for the next
        `count` requests or until cleared (count=0 or clear_faults())."""
        self.faults.set_errors(path_prefix, status, count)

    def clear_faults(self) -> None:
        """Undo every fault: job faults, class failures, HTTP faults, refused / stalled sockets."""
        self.faults.clear()
        self.hub.refuse = False
        self.hub.stall(False)

    async def __aenter__(self) -> Emulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.stop()
