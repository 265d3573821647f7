"""Where a training loop runs: one process (a Tune trial, or final training's Ray task) or a
worker of a Ray Train DDP group. The HPO fold loop and final training's epoch loop take a
``Session`` (and ask ``placement``) and know nothing else of Ray. Each session trains with as
many torch threads as CPUs Ray reserved for it (``resources.match_threads``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ray_pipeline.internals import checkpoint_loggers
from ray_pipeline.resources import match_threads

if TYPE_CHECKING:
    import torch


def quiet_checkpoints() -> None:
    """No line per checkpoint (one per epoch) and no progress bar per saved model."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    for name in checkpoint_loggers():  # Ray's internal modules: "Checkpoint successfully created"
        logging.getLogger(name).setLevel(logging.WARNING)


def placement() -> dict[str, Any]:
    """Where this worker runs, as a fold records it: its Ray node and the GPUs Ray gave it
    (several trials may share one: fractional GPUs)."""
    import ray

    gpus = [str(g) for g in ray.get_gpu_ids()]
    return {"node": str(ray.get_runtime_context().get_node_id()), "gpu_ids": gpus}


class Session(Protocol):
    """What a loop needs of the place it runs in."""

    rank: int
    world_size: int
    device: torch.device
    threads: int

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on this worker's device (wrapped for DDP when there are several)."""
        ...

    def checkpoint(self) -> Any | None:
        """The last checkpoint reported before a retry (a ``ray.train.Checkpoint``)."""
        ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """Report ``metrics`` (a barrier across workers), with the directory as a checkpoint."""
        ...

    def fit_threads(self) -> int:
        """The torch threads to train the next epoch with (set): ``threads``, or more where
        the place lends idle cores (hpo/idle_cores.py)."""
        ...


class TaskSession:
    """One process with its own CPUs or GPU: no DDP, nothing reported to Ray."""

    rank = 0
    world_size = 1

    def __init__(self) -> None:
        import ray
        import torch

        cuda = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
        # Ray sets CUDA_VISIBLE_DEVICES to the GPU it reserved: it is device 0 here.
        self.device: torch.device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        self.threads = match_threads()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def checkpoint(self) -> Any | None:
        return None

    def fit_threads(self) -> int:
        return self.threads

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        return None


class TrainSession:
    """A Ray Train worker: DDP across the worker group."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device: torch.device = ray.train.torch.get_device()
        self.threads = match_threads()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        prepared_model: torch.nn.Module = ray.train.torch.prepare_model(model)
        return prepared_model

    def checkpoint(self) -> Any | None:
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def fit_threads(self) -> int:
        return self.threads
