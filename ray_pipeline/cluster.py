"""Connecting to Ray: an existing cluster (RAY_ADDRESS, a Ray job) or a local one (laptop)."""

from __future__ import annotations

import os
import signal
import threading

TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_SECONDS = "0.25"
"""Ray Train's controller collects worker reports on this interval (default 2 s); each fold
report waits for it, so a short interval cuts ~1.7 s per fold (benchmarks/hpo_overhead.py)."""


def ensure_ray() -> None:
    """Initialise Ray unless it already is. ``ray.init()`` honours RAY_ADDRESS, and inside
    ``ray job submit`` it attaches to the job's cluster; otherwise it starts a local one."""
    import ray

    if ray.is_initialized():
        return
    # A local cluster started here inherits this process's environment (a cluster started
    # with `ray start` takes it from that shell; see docs/hpo.md).
    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_SECONDS)
    context = ray.init(log_to_driver=True)
    _unwind_on_sigterm()
    resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
    dashboard = getattr(context, "dashboard_url", None) or "not running"
    print(
        f"ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; "
        f"dashboard: {dashboard}"
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _unwind_on_sigterm() -> None:
    """Make SIGTERM (e.g. `ray job stop`) unwind like Ctrl-C, so open MLflow runs end KILLED and
    the variant is marked failed for resume_if_incomplete. ray.init installs a handler that
    aborts the process instead; this puts ours back after it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
