"""Real processes the tests start on this machine: the CLI as a child process, `ray start`
nodes, the local ports they listen on, and killing exactly what a test started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.waits import wait_for

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
    """Start ``argv`` in a session of its own (``kill_started`` ends it and what it started),
    its stdout and stderr into ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


AS_FROM_A_TERMINAL = ["env", "--default-signal=INT,QUIT"]
"""Start a command with SIGINT and SIGQUIT at their defaults, as a terminal starts it (Ctrl-C
raises KeyboardInterrupt in Python). A child inherits the signals its parent ignores, and in
full runs of the suite the test process ignored SIGINT and SIGQUIT when it started the CLI of
the Ctrl-C test (both, as C's system() does while it runs; culprit not found): the CLI's
/proc status showed SigIgn 0x1001006, it ran to the end and exited 0 (two runs of two)."""


def cli_process(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """``ray-pipeline ARGS`` as a child process started as from a terminal (see
    ``start_logged``)."""
    return start_logged([*AS_FROM_A_TERMINAL, *CLI, *args], log)


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


def _processes() -> dict[int, tuple[int, int]]:
    """Each live process's (parent pid, session id), from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended since the listing
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp session ...
        if fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def _started_by(roots: set[int]) -> set[int]:
    """The live processes among ``roots`` and all they started: their descendants, and what
    is left in their sessions (an orphan handed to init keeps its session id)."""
    table = _processes()
    found = {pid for pid, (_, session) in table.items() if pid in roots or session in roots}
    while more := {pid for pid, (parent, _) in table.items() if parent in found} - found:
        found |= more
    return found


def kill_started(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL ``processes`` (a CLI, `ray start` nodes) and everything they started, found by
    parentage and session (never by name; `ray stop` would stop every Ray on the machine,
    other tests' included): a local Ray cluster that a CLI started puts its processes in
    process groups of their own, out of reach of ``os.killpg``. All are stopped (SIGSTOP)
    before any is killed, so that none starts another unseen, is orphaned out of the tree, or
    writes anything more (a trial's checkpoint) meanwhile; returns once all are gone."""
    roots = {p.pid for p in processes}
    stopped: set[int] = set()
    while more := _started_by(roots) - stopped:
        for pid in more:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        stopped |= more
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for process in processes:
        process.wait(timeout=60)
    wait_for(
        lambda: not stopped & set(_processes()),
        f"the {len(stopped)} processes they started to end",
        timeout=60,
    )
