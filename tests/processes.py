"""Real processes the tests start on this machine: the CLI as a child process, `ray start`
nodes, the local ports they listen on, and killing exactly what a test started."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.gpus import declared_gpus
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


def _healthy(uri: str) -> bool:
    """Whether the server at ``uri`` answers its health check; false while it starts (the
    port refuses, or accepts and then drops or keeps the request unanswered)."""
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return bool(response.status == 200)
    except urllib.error.URLError as exc:  # an HTTPError (it answered, with an error) raises
        if isinstance(exc.reason, (ConnectionRefusedError, TimeoutError)):
            return False
        raise
    except (ConnectionResetError, TimeoutError):
        return False


def _end_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group of ``process`` (started by ``start_logged``), SIGKILL it if
    it has not ended 30 s later."""
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def short_temp_dir(prefix: str) -> Iterator[Path]:
    """A new directory directly under /tmp, removed on exit: the temp dir of a `ray start`
    node. Ray's socket paths under it (``session_<date>_<pid>/sockets/dash_MetricsHead``)
    must stay under 108 bytes, and a pytest temp dir under pytest-xdist
    (``/tmp/pytest-of-<user>/pytest-<n>/popen-gw0/<name>0``) left the dashboard one byte over:
    its MetricsHead did not start, and the head's Ray Client server gave up a minute later."""
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def running_mlflow_server(
    directory: Path, artifacts: str, env: dict[str, str] | None = None
) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend in ``directory`` and its
    artifacts at ``artifacts`` (a path, or ``s3://...`` with the S3 settings in ``env``), in
    a session of its own: on exit its process group (the server and its workers) ends."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--backend-store-uri", f"sqlite:///{directory / 'server.db'}"]
    argv += ["--artifacts-destination", artifacts, "--workers", "1"]
    log = directory / "server.log"
    proc = start_logged(argv, log, env=env, cwd=directory)
    try:
        wait_for(
            lambda: _healthy(uri),
            f"the MLflow server at {uri} to answer /health (its log: {log})",
            timeout=90,
            still_running=lambda: proc.poll() is None,
        )
        yield uri
    finally:
        _end_group(proc)


MOTO_SERVER = str(Path(sys.executable).parent / "moto_server")
"""moto's S3-compatible server (PyPI ``moto[server]``), of this environment."""


@contextlib.contextmanager
def running_s3_server(directory: Path) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (in-memory), started here and ended by its pid; yields
    its endpoint URL."""
    port = free_port()
    log = directory / "moto.log"
    proc = start_logged([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)], log, cwd=directory)
    try:
        wait_for(
            lambda: accepts(port),
            f"the S3 server on port {port} (its log: {log})",
            timeout=60,
            still_running=lambda: proc.poll() is None,
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        _end_group(proc)


@dataclass
class Cluster:
    """A local two-node Ray cluster: `ray start --head` and one `ray start --address`."""

    address: str
    env: dict[str, str]
    head: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]


def alive_nodes(address: str, env: dict[str, str]) -> list[str]:
    """The alive nodes' ids, the head first (asked by a short-lived driver)."""
    code = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR');"
        "n=[x for x in ray.nodes() if x['Alive']];"
        "n.sort(key=lambda x: 'node:__internal_head__' not in x['Resources']);"
        "print(' '.join(x['NodeID'] for x in n))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:  # the head is still starting: ask again
        return []
    return done.stdout.split() if done.returncode == 0 else []


@contextlib.contextmanager
def two_node_cluster(
    head_dir: Path,
    node_dir: Path,
    env: dict[str, str],
    *,
    head_cpus: int = 1,
    worker_cpus: int = 1,
    worker_prefix: tuple[str, ...] = (),
) -> Iterator[Cluster]:
    """A head and a worker node, each with its own temp dir (short paths: Ray's socket paths
    under it must stay under 108 bytes); the worker's `ray start` runs under
    ``worker_prefix`` (e.g. a mount namespace). Each declares the suite's GPUs (tests/gpus.py:
    none, or fake ones). On exit exactly these two `ray start`s and what they started are
    killed."""
    port = free_port()
    common = ["--block", "--disable-usage-stats", f"--num-gpus={declared_gpus()}"]
    head_args = [f"--port={port}", "--include-dashboard=false", f"--temp-dir={head_dir}"]
    head_args.append(f"--ray-client-server-port={free_port()}")  # not 10001: another head has it
    head = start_logged(
        [RAY, "start", "--head", *head_args, f"--num-cpus={head_cpus}", *common],
        head_dir / "start.log",
        env,
    )
    address = f"127.0.0.1:{port}"
    started = [head]
    try:
        wait_for(
            lambda: accepts(port),
            "the head node's GCS port",
            120,
            still_running=lambda: head.poll() is None,
        )
        wait_for(lambda: len(alive_nodes(address, env)) == 1, "the head node", 120)
        worker_args = [f"--address={address}", f"--num-cpus={worker_cpus}", *common]
        worker = start_logged(
            [*worker_prefix, RAY, "start", *worker_args, f"--temp-dir={node_dir}"],
            node_dir / "start.log",
            env,
        )
        started.append(worker)
        wait_for(
            lambda: len(alive_nodes(address, env)) == 2,
            f"the worker node (its log: {node_dir / 'start.log'})",
            120,
            still_running=lambda: worker.poll() is None,
        )
        yield Cluster(address, env, head, worker)
    finally:
        for process in reversed(started):  # exactly the `ray start`s launched here
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
