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
from ray_pipeline.schema import FinalResources, ResourcesConfig

DRIVER_MEMORY_BYTES = 1 << 20
"""A trial driver only waits on its workers; it reserves memory, not a CPU, so trials pack."""


@dataclass(frozen=True)
class Node:
    """One alive node's total resources."""

    cpus: float
    gpus: float
    cuda: bool = True
    """Whether torch can use its GPUs, as far as the driver can tell (``cluster_nodes``): the
    defaults that choose GPUs (the refit's ``gpus_per_worker``, the benchmark's ``device``)
    and the benchmark's ``device: cuda`` count only such nodes' GPUs; ``gpus_per_worker`` set
    explicitly is placed on any declared GPU."""

    @property
    def cuda_gpus(self) -> float:
        """The GPUs that the defaults may choose."""
        return self.gpus if self.cuda else 0.0


@dataclass(frozen=True)
class TrialPlan:
    """What one trial (or final training) asks for, and how many trials run at once."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    max_concurrent_trials: int
    max_failures: int = 0
    """Retries per trial, worker group or benchmark actor (``resources.max_failures``)."""
    in_process: bool = False
    """One worker trains in one process, not in a Ray Train worker group: inside its Tune trial
    (HPO, trial_backend auto), or in one Ray task (final training)."""
    lend_idle_cores: bool = False
    """HPO: an in-process CPU trial may take cores finished trials freed
    (``resources.lend_idle_cores``, hpo/idle_cores.py)."""

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
    in_process = workers == 1 and config.trial_backend == "auto"
    return TrialPlan(
        workers,
        cpw,
        gpw,
        max(1, min(wanted, fits)),
        max_failures=config.max_failures,
        in_process=in_process,
        lend_idle_cores=config.lend_idle_cores and in_process and gpw == 0,
    )


def plan_final(final: FinalResources, trials: ResourcesConfig, nodes: Sequence[Node]) -> TrialPlan:
    """Final training's worker group: ``final_training.resources``, its null fields chosen from
    ``nodes`` (docs/final-training.md#resources); ConfigError when it can never be placed."""
    if not nodes:
        raise ConfigError.at("final_training.resources", "the Ray cluster has no alive nodes")
    gpw = final.gpus_per_worker
    if gpw is None:
        gpw = 1.0 if any(n.cuda_gpus >= 1 for n in nodes) else 0.0
    cpw = final.cpus_per_worker
    if cpw is None and gpw > 0:  # a GPU worker's CPUs feed it; leave every GPU one
        per_gpu = min((n.cpus / n.gpus for n in nodes if n.gpus >= gpw), default=1.0)
        cpw = min(trials.cpus_per_worker, per_gpu)
    elif cpw is None:  # CPU training: the most cores per worker that fit the workers asked
        cpw = _most_cpus_per_worker(final.workers or 1, nodes)
    asked = f"({cpw:g} CPU, {gpw:g} GPU) per worker"
    if gpw > 0 and not any(n.gpus > 0 for n in nodes):
        raise ConfigError.at(
            "final_training.resources.gpus_per_worker",
            f"{asked} asks for GPUs, but the cluster has none ({_describe(nodes)}); set "
            "final_training.resources.gpus_per_worker=0 to train on CPUs",
        )
    capacity = sum(_workers_fitting(n, cpw, gpw) for n in nodes)
    shared_gpu = 0 < gpw < 1  # DDP ranks on one GPU fail in NCCL: one worker then
    workers = final.workers or (1 if shared_gpu else min(capacity, final.max_workers or capacity))
    if capacity < max(workers, 1):
        raise ConfigError.at(
            "final_training.resources.workers",
            f"final training asks for {max(workers, 1)} worker(s) x {asked}, but the cluster "
            f"fits {capacity}: {_describe(nodes)}. Lower final_training.resources.workers or "
            "cpus_per_worker / gpus_per_worker (null: chosen from the cluster), or add nodes",
        )
    in_process = workers == 1 and trials.trial_backend == "auto"
    return TrialPlan(workers, cpw, gpw, 1, max_failures=trials.max_failures, in_process=in_process)


def _most_cpus_per_worker(workers: int, nodes: Sequence[Node]) -> float:
    """The most whole CPUs per worker with which ``nodes`` fit ``workers`` workers (1 if none:
    the caller reports what does not fit). One worker: the largest node's cores."""
    for cpus in range(math.floor(max(n.cpus for n in nodes)), 1, -1):
        if sum(math.floor(n.cpus / cpus + 1e-9) for n in nodes) >= workers:
            return float(cpus)
    return 1.0


def threads_for(cpus: float) -> int:
    """Torch intra-op threads for a reservation of ``cpus`` CPUs: its whole CPUs, at least 1."""
    return max(1, math.floor(cpus + 1e-9))


def match_threads() -> int:
    """Torch's intra-op threads := the CPUs Ray reserved for this task, actor or worker. Ray
    sets OMP_NUM_THREADS per task, but torch reads it once per process, and Ray reuses worker
    processes: measured with Ray 2.60, a 2-CPU task that ran after a 1-CPU task in the same
    worker trained with 1 thread, and a 1-CPU task after a 2-CPU one with 2. So set it."""
    import ray
    import torch

    assigned = ray.get_runtime_context().get_assigned_resources()  # type: ignore[no-untyped-call]
    threads = threads_for(float(assigned.get("CPU", 1.0)))
    torch.set_num_threads(threads)
    return threads


def cluster_nodes() -> list[Node]:
    """The alive nodes of the connected Ray cluster, each with whether torch can use its GPUs
    (``torch_uses_gpus``)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    nodes = []
    for n in ray.nodes():  # type: ignore[no-untyped-call]
        if not n.get("Alive"):
            continue
        gpus = float(n["Resources"].get("GPU", 0))
        cuda = gpus > 0 and torch_uses_gpus(on_this_node=n["NodeID"] == here)
        nodes.append(Node(cpus=float(n["Resources"].get("CPU", 0)), gpus=gpus, cuda=cuda))
    return nodes


def torch_uses_gpus(on_this_node: bool) -> bool:
    """Whether torch can use the GPUs Ray declares on a node, as far as this process can tell:
    not with a torch built without CUDA (the nodes of a cluster run one environment: a CPU
    build of torch on a GPU machine, say, where Ray still detects the GPUs), nor on this
    process's own node when torch here sees no CUDA device (GPUs declared to Ray but hidden
    from CUDA, or not there). Other nodes' GPUs are taken as declared."""
    import torch

    if not torch.backends.cuda.is_built():  # type: ignore[no-untyped-call]
        return False
    return torch.cuda.is_available() if on_this_node else True
