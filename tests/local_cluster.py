"""Pieces of the tests that start real Ray nodes with `ray start` on this machine."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
"""The `ray` command of this environment."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(port: int) -> bool:
    """Whether something listens on ``port`` of 127.0.0.1."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0
