"""Measuring one checkpoint: pure torch, no Ray (the timing itself is ``timing.py``). The
benchmark actor calls ``measure``; ``benchmarks/benchmark_latency.py`` calls it in-process to
check the actor's numbers."""

from __future__ import annotations

import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_pipeline.benchmark.results import BenchmarkJob, BenchmarkResult
from ray_pipeline.models import TASK_MODEL_CLASSES
from ray_pipeline.precision import Resolved, dtype_of, resolve
from ray_pipeline.storage import local_copy, size_of
from ray_pipeline.timing import fixed_length_batch, summarise, time_forward
from ray_pipeline.training import evaluate

if TYPE_CHECKING:
    import torch


def pick_device(requested: str | None) -> torch.device:
    """``requested``, or (null) CUDA when visible, else CPU."""
    import torch

    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def describe_device(device: torch.device) -> str:
    import torch

    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def load_checkpoint(
    path: Path, task: str, device: torch.device, precision: Resolved = "fp32"
) -> Any:
    """The checkpoint's model in eval mode on ``device``, cast to ``precision``."""
    import transformers

    cls = getattr(transformers, TASK_MODEL_CLASSES[task])
    return cls.from_pretrained(str(path)).to(device, dtype_of(precision)).eval()


def measure(job: BenchmarkJob, actor_id: str = "in-process") -> BenchmarkResult:
    """Load ``job.checkpoint`` (from ``job.source``) and measure it with ``job.settings``."""
    import torch

    torch.set_num_threads(job.threads)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    settings = job.settings
    device = pick_device(settings.device)
    precision = resolve(job.precision, device, "benchmark.benchmarking.precision")
    with local_copy(job.source or str(job.checkpoint)) as local:
        model = load_checkpoint(local, job.task, device, precision)
        size_mb = size_of(local) / 1e6
    pad_id = int(model.config.pad_token_id or 0)
    latency = []
    for size in settings.batch_sizes:
        batch = fixed_length_batch(job.timing_rows, size, job.max_length, pad_id)
        timings = time_forward(
            model, batch, settings.iterations, settings.warmup_iterations, device
        )
        latency.append(summarise(size, timings))
    test_metrics = None
    if job.test_rows is not None:
        eval_batch = max(settings.batch_sizes)
        test_metrics = evaluate(
            model, job.test_rows, job.labels, job.task, eval_batch, pad_id, device
        )
    return BenchmarkResult(
        trial=job.trial,
        checkpoint=str(job.checkpoint),
        settings_hash=job.settings_hash,
        device=describe_device(device),
        precision=precision,
        threads=torch.get_num_threads(),
        max_length=job.max_length,
        latency=latency,
        parameters=sum(p.numel() for p in model.parameters()),
        size_mb=size_mb,
        test_metrics=test_metrics,
        host=socket.gethostname(),
        pid=os.getpid(),
        actor_id=actor_id,
        started_at=started_at,
        seconds=time.perf_counter() - start,
    )
