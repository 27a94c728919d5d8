"""The one free-port helper of the suite."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nothing listens on right now: for a server the test starts as a process
    (which must be told its port), or for a connection that must be refused. In-process servers
    bind port 0 themselves and read the port back instead."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
