"""Timing a model's forward pass: fixed-length batches, synchronised timings, their summary.
Pure torch, no Ray. The benchmark measures checkpoints with it (``benchmark/measure.py``) and an
HPO trial its latency objective (``hpo/worker.py``)."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ray_pipeline.artifacts import Record
from ray_pipeline.data.encode import Row

if TYPE_CHECKING:
    import torch


class LatencyStats(Record):
    """Timings of one batch size."""

    batch_size: int
    iterations: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    """Per batch."""
    mean_ms_per_example: float
    p50_ms_per_example: float
    p95_ms_per_example: float
    throughput: float
    """Examples per second (batch size / mean batch latency)."""


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
