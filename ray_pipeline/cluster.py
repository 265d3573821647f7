"""Connecting to Ray: an existing cluster (RAY_ADDRESS, a Ray job) or a local one (laptop)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from ray_pipeline.console import verbose
from ray_pipeline.errors import ConfigError
from ray_pipeline.storage import (
    StorageError,
    WorkerStorage,
    delete,
    join,
    probe,
    read_probe,
    write_text,
)

TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_SECONDS = "0.25"
"""Ray Train's controller collects worker reports on this interval (default 2 s); each report
of a worker group (DDP or trial_backend=train trials, final training) waits for it. One-worker
trials report through Tune and do not."""

DASHBOARD_ENV = "RAY_PIPELINE_INCLUDE_DASHBOARD"
"""0: a local cluster this process starts has no dashboard (Ray's ``include_dashboard=False``:
its head process still runs, without the module subprocesses that serve the UI; about 2
CPU-seconds and about ten processes less per start), for CI and shared machines. Unset or anything
else: Ray's default (the dashboard, where ray[default] is installed). A cluster the run connects
to keeps what its `ray start` chose."""


def ensure_ray(address: str | None = None) -> None:
    """Initialise Ray unless it already is: ``address`` (``resources.address``), else
    RAY_ADDRESS (inside ``ray job submit`` the job's cluster), else a Ray already running on
    this machine, else a new local cluster."""
    import ray

    if ray.is_initialized():
        return
    # A local cluster started here inherits this process's environment (a cluster started
    # with `ray start` takes it from that shell; see docs/hpo.md).
    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_SECONDS)
    # Ray's start-up INFO lines and its token-authentication notice are what the `ray:` line
    # below says; later warnings from Ray show (--verbose: everything).
    chatty = verbose()
    context = ray.init(
        address=address,
        include_dashboard=False if os.environ.get(DASHBOARD_ENV, "").strip() == "0" else None,
        log_to_driver=True,
        logging_level=logging.INFO if chatty else logging.ERROR,
    )
    if not chatty:
        logging.getLogger("ray").setLevel(logging.WARNING)
    _unwind_on_sigterm()
    resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
    print(
        f"ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; "
        f"dashboard: {dashboard_line(getattr(context, 'dashboard_url', None))}"
    )


def dashboard_line(url: str | None) -> str:
    """Where the dashboard is and, with Ray's token authentication on (Ray sets RAY_AUTH_MODE
    when it enables it), how to get in: the page asks for the token that `ray get-auth-token`
    prints."""
    if not url:
        return "not running"
    if not url.startswith("http"):
        url = f"http://{url}"
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return url
    return f"{url} (token authentication: paste the token `ray get-auth-token` prints)"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _unwind_on_sigterm() -> None:
    """Make SIGTERM (e.g. `ray job stop`) unwind like Ctrl-C, so open MLflow runs end KILLED and
    the variant is marked failed for resume_if_incomplete. ray.init installs a handler that
    aborts the process instead; this puts ours back after it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


@contextmanager
def ctrl_c_unwinds() -> Iterator[None]:
    """Keep Ctrl-C an interruption across a Ray Train ``fit()`` in the main thread. fit()
    installs Ray Train's own SIGINT handler, which aborts the run and then ends the driver with
    SystemExit(1): the stage would end its MLflow run FAILED and the CLI exit 1, not 130. That
    handler also outlives fit() and swallows a later Ctrl-C. Here a SystemExit out of the
    block while Ray Train holds SIGINT becomes KeyboardInterrupt, and the handler from before
    is put back."""
    before = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SystemExit as exc:
        if signal.getsignal(signal.SIGINT) is before:
            raise
        raise KeyboardInterrupt("Ray Train aborted the run on SIGINT") from exc
    finally:
        if before is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, before)


def unseen_by(readings: dict[str, str | None], token: str) -> list[str]:
    """The nodes whose reading of the probe file is not ``token``."""
    return sorted(node for node, seen in readings.items() if seen != token)


def check_storage(storage: WorkerStorage) -> None:
    """Refuse a ``storage.uri`` that cannot be written and read back from here (exit 2
    naming the URI and the filesystem's error), before anything starts."""
    if storage.uri is None:
        return
    try:
        probe(storage.uri)
    except StorageError as exc:
        raise ConfigError.at(
            "storage.uri",
            f"cannot write and read back {exc}. Check the bucket exists, the credentials in "
            "the environment (AWS_* variables or the instance role; AWS_ENDPOINT_URL for an "
            "S3-compatible server) and that they allow writing",
        ) from exc


def check_shared_storage(storage: WorkerStorage) -> int:
    """On a multi-node cluster, refuse worker storage (``storage.uri``, else the outputs
    path) that some node cannot see, checked by writing a probe file here and reading it from
    a task pinned to each node. Returns the number of alive nodes."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check_storage(storage)
    nodes = {
        n["NodeID"]: n["NodeManagerAddress"]
        for n in ray.nodes()  # type: ignore[no-untyped-call]
        if n.get("Alive")
    }
    if len(nodes) < 2:
        return len(nodes)
    root = storage.outputs_root
    shared = storage.uri or str(next(p for p in (root, *root.parents) if p.is_dir()))
    token = uuid.uuid4().hex
    probe_file = join(shared, f".ray_pipeline_probe_{token}")
    write_text(probe_file, token)
    try:
        read = ray.remote(num_cpus=0)(read_probe)
        refs = {
            node: read.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            ).remote(probe_file)
            for node in nodes
        }
        readings = dict(zip(refs, ray.get(list(refs.values()), timeout=120), strict=True))
    finally:
        delete(probe_file)
    blind = unseen_by(readings, token)
    if blind:
        where = ", ".join(f"{nodes[n]} (node {n[:8]})" for n in blind)
        key, fix = (
            ("storage.uri", "Give every node the same credentials (instance role or AWS_*)")
            if storage.uri
            else (
                "outputs_root",
                "Point outputs_root at a filesystem every node mounts at the same path (NFS, "
                "EFS, ...), or set storage.uri to a bucket",
            )
        )
        raise ConfigError.at(
            key,
            f"{storage.uri or root} is not shared storage: {len(blind)} of {len(nodes)} nodes "
            f"cannot see it ({where}). {fix}; see docs/cluster.md",
        )
    print(f"ray: {len(nodes)} nodes share {storage.uri or root}")
    return len(nodes)
