"""One emulated ComfyUI process as its routes see it."""

from __future__ import annotations

from .execution import ServerState
from .parts import Parts


class Process:
    """The parts that outlive a restart, the in-memory state a restart replaces, and the address
    the server listens on (for /system_stats). The Emulator owns one and swaps its `state`."""

    __slots__ = ("parts", "state", "host", "port")

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.state = ServerState(parts)
        self.host = "127.0.0.1"
        self.port = 0
