"""The console in a real browser: Debian's chromium driven by Playwright, against the real app
(uvicorn on loopback, SQLite, two emulated backends) running in a thread of its own, so the
browser's synchronous API and the app's event loop never share a thread."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from comfy_emulator import Emulator, EmulatorConfig
from tests.integration.conftest import ADMIN_KEY, start_gateway

CHROMIUM = os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium")
# The network here is closed: without these, chromium waits on connections it will never get.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Stack:
    base_url: str
    backends: list[str]
    admin: httpx.Client
    tmp: Path


class _Loop:
    """An event loop in a thread; `run(coro)` waits for a coroutine run there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="e2e app", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 90) -> Any:
        future: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: the console's browser tests need Debian's chromium (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run them")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("console")
    db = tmp / "gateway.db"
    shutil.copy(sqlite_template, db)
    runner = _Loop()
    # 50 ms a step: a 100-step job runs for seconds, long enough to watch and to cancel.
    emulators = [Emulator(EmulatorConfig(step_seconds=0.05)) for _ in range(2)]

    async def up() -> Any:
        for emu in emulators:
            await emu.start(host="127.0.0.1", port=0)
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{db}",
            storage_dir=tmp / "outputs",
            admin_api_key=ADMIN_KEY,
            comfyui_urls=[emu.base_url for emu in emulators],
            dispatch_poll_seconds=0.2,
            backend_retry_seconds=0.2,
            # A webhook to a closed loopback port: deliveries that fail, for the redeliver button.
            outbound_allowlist=["127.0.0.1"],
            webhook_poll_seconds=0.2,
            _env_file=None,
        )
        gw = await start_gateway(settings)
        deadline = time.monotonic() + 15
        while not all(link.healthy and link.capabilities for link in gw.dispatcher.links):
            assert time.monotonic() < deadline, "the gateway never connected to its backends"
            await asyncio.sleep(0.05)
        return gw

    gw = runner.run(up())
    admin = httpx.Client(base_url=gw.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    try:
        yield Stack(gw.base_url, [e.base_url for e in emulators], admin, tmp)
    finally:
        admin.close()

        async def down() -> None:
            await gw.close()
            for emu in emulators:
                await emu.stop()

        runner.run(down())
        runner.close()


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
