"""The resource planner: the cluster's nodes + the config -> per-trial requests and concurrency.

A request the cluster can never satisfy is refused at once (exit 2) with what was asked and
what exists: Ray Train would otherwise wait for an infeasible worker group forever.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ray_pipeline.errors import ConfigError
from ray_pipeline.schema import ResourcesConfig

DRIVER_MEMORY_BYTES = 1 << 20
"""A trial driver only waits on its workers; it reserves memory, not a CPU, so trials pack."""


@dataclass(frozen=True)
class Node:
    """One alive node's total resources."""

    cpus: float
    gpus: float


@dataclass(frozen=True)
class TrialPlan:
    """What one trial asks for, and how many trials run at once."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    max_concurrent_trials: int
    max_failures: int = 0
    """Retries per trial, worker group or benchmark actor (``resources.max_failures``)."""
    in_process: bool = False
    """A trial trains inside its Tune trial (one worker, trial_backend auto), not in a Ray
    Train worker group."""

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


def scaling_config(plan: TrialPlan) -> Any:
    """Ray Train's ScalingConfig for one worker group of ``plan`` (a trial, or final training)."""
    from ray.train import ScalingConfig

    per_worker = {"CPU": plan.cpus_per_worker}
    if plan.use_gpu:
        per_worker["GPU"] = plan.gpus_per_worker
    return ScalingConfig(
        num_workers=plan.workers, use_gpu=plan.use_gpu, resources_per_worker=per_worker
    )


def _workers_fitting(node: Node, cpus: float, gpus: float) -> int:
    by_cpu = math.floor(node.cpus / cpus + 1e-9) if cpus > 0 else 10**6
    by_gpu = math.floor(node.gpus / gpus + 1e-9) if gpus > 0 else 10**6
    return min(by_cpu, by_gpu)


def _describe(nodes: Sequence[Node]) -> str:
    cpus = sum(n.cpus for n in nodes)
    gpus = sum(n.gpus for n in nodes)
    per_node = "; ".join(f"{n.cpus:g} CPU, {n.gpus:g} GPU" for n in nodes)
    return f"{len(nodes)} node(s) with {cpus:g} CPUs and {gpus:g} GPUs in all ({per_node})"


def plan_trials(config: ResourcesConfig, nodes: Sequence[Node]) -> TrialPlan:
    """Per-trial requests and concurrency, or ConfigError when a trial can never be placed."""
    cpw, gpw, workers = config.cpus_per_worker, config.gpus_per_worker, config.workers_per_trial
    asked = f"{workers} worker(s) x ({cpw:g} CPU, {gpw:g} GPU)"
    if not nodes:
        raise ConfigError.at("resources", "the Ray cluster has no alive nodes")
    if gpw > 0 and sum(n.gpus for n in nodes) == 0:
        raise ConfigError.at(
            "resources.gpus_per_worker",
            f"{asked} asks for GPUs, but the cluster has none ({_describe(nodes)}); "
            "set resources.gpus_per_worker=0 to train on CPUs",
        )
    capacity = sum(_workers_fitting(n, cpw, gpw) for n in nodes)
    if capacity < workers:
        raise ConfigError.at(
            "resources.workers_per_trial",
            f"one trial needs {asked}, but the cluster fits only {capacity} such worker(s): "
            f"{_describe(nodes)}. Lower resources.workers_per_trial or cpus_per_worker / "
            "gpus_per_worker, or add nodes",
        )
    fits = capacity // workers
    wanted = config.max_concurrent_trials or fits
    return TrialPlan(
        workers,
        cpw,
        gpw,
        max(1, min(wanted, fits)),
        max_failures=config.max_failures,
        in_process=workers == 1 and config.trial_backend == "auto",
    )


def cluster_nodes() -> list[Node]:
    """The alive nodes of the connected Ray cluster."""
    import ray

    return [
        Node(cpus=float(n["Resources"].get("CPU", 0)), gpus=float(n["Resources"].get("GPU", 0)))
        for n in ray.nodes()  # type: ignore[no-untyped-call]
        if n.get("Alive")
    ]
