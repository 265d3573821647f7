"""Connecting to Ray: an existing cluster (RAY_ADDRESS, a Ray job) or a local one (laptop)."""

from __future__ import annotations


def ensure_ray() -> None:
    """Initialise Ray unless it already is. ``ray.init()`` honours RAY_ADDRESS, and inside
    ``ray job submit`` it attaches to the job's cluster; otherwise it starts a local one."""
    import ray

    if ray.is_initialized():
        return
    context = ray.init(log_to_driver=True)
    resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
    dashboard = getattr(context, "dashboard_url", None) or "not running"
    print(
        f"ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; "
        f"dashboard: {dashboard}"
    )
