"""Real processes the tests start on this machine: the CLI as a child process, `ray start`
nodes, and the local ports they listen on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
"""The `ray` command of this environment."""

CLI = [sys.executable, "-m", "ray_pipeline"]
"""The pipeline's command line, run by this environment's Python."""


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


def start_logged(
    argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own (``os.killpg`` ends it and what it started),
    its stdout and stderr into ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def cli_process(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """``ray-pipeline ARGS`` as a child process (see ``start_logged``)."""
    return start_logged([*CLI, *args], log)


def ray_node_env(token: str) -> dict[str, str]:
    """The environment for `ray start` nodes of a local test cluster and the drivers that join
    it: this environment's commands first, token auth, no model hub, fast Train health checks,
    and no inherited RAY_ADDRESS."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",  # Ray >= 2.59 turns it on for local clusters anyway
        "RAY_AUTH_TOKEN": token,
        "HF_HUB_OFFLINE": "1",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    }
    env.pop("RAY_ADDRESS", None)
    return env
