"""Timing one checkpoint: pure torch, no Ray. The benchmark actor calls ``measure``;
``benchmarks/benchmark_latency.py`` calls it in-process to check the actor's numbers."""

from __future__ import annotations

import itertools
import os
import socket
import statistics
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_pipeline.benchmark.results import BenchmarkJob, BenchmarkResult, LatencyStats
from ray_pipeline.data.encode import Row
from ray_pipeline.models import TASK_MODEL_CLASSES
from ray_pipeline.precision import Resolved, dtype_of, resolve
from ray_pipeline.storage import local_copy, size_of
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


def fixed_length_batch(rows: Sequence[Row], batch_size: int, max_length: int, pad_id: int) -> Any:
    """A batch of ``batch_size`` inputs, each exactly ``max_length`` tokens (rows are cycled
    to fill it and padded / cut to length), as CPU tensors without labels."""
    import torch

    chosen = list(itertools.islice(itertools.cycle(rows), batch_size))
    batch: dict[str, torch.Tensor] = {}
    for key in chosen[0]:
        if key == "labels":
            continue
        fill = pad_id if key == "input_ids" else 0
        values = [(list(r[key]) + [fill] * max_length)[:max_length] for r in chosen]
        batch[key] = torch.tensor(values)
    return batch


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(
    model: Any, batch: dict[str, Any], iterations: int, warmup: int, device: torch.device
) -> list[float]:
    """Milliseconds of ``iterations`` forward passes after ``warmup`` untimed ones; the
    inputs are on ``device`` before the clock starts and the device is synchronised before
    it is read."""
    import torch

    inputs = {k: v.to(device) for k, v in batch.items()}
    timings = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(**inputs)
        _sync(device)
        for _ in range(iterations):
            start = time.perf_counter()
            model(**inputs)
            _sync(device)
            timings.append((time.perf_counter() - start) * 1000.0)
    return timings


def summarise(batch_size: int, timings_ms: Sequence[float]) -> LatencyStats:
    """Mean, p50 and p95 per batch and per example, and throughput."""
    mean = statistics.fmean(timings_ms)
    p50 = statistics.median(timings_ms)
    p95 = (
        statistics.quantiles(timings_ms, n=20, method="inclusive")[-1]
        if len(timings_ms) > 1
        else timings_ms[0]
    )
    return LatencyStats(
        batch_size=batch_size,
        iterations=len(timings_ms),
        mean_ms=mean,
        p50_ms=p50,
        p95_ms=p95,
        mean_ms_per_example=mean / batch_size,
        p50_ms_per_example=p50 / batch_size,
        p95_ms_per_example=p95 / batch_size,
        throughput=batch_size / (mean / 1000.0),
    )


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
