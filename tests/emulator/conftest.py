from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from comfy_emulator import Emulator, EmulatorConfig


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    e = Emulator(EmulatorConfig())
    await e.start()
    try:
        yield e
    finally:
        await e.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s
