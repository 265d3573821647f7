"""Custom Ray metrics (``ray.util.metrics``): what the Ray dashboard's Metrics view and
Prometheus show about a running pipeline. Each node's metrics agent exports them (Prometheus
text at ``ray start --metrics-export-port``), prefixed ``ray_``:

  ray_pipeline_trials_total{variant, event=started|finished|pruned|failed}   counter
  ray_pipeline_fold_seconds_bucket/_sum/_count{variant}                      histogram
  ray_pipeline_best_objective{variant}                                       gauge
  ray_pipeline_benchmark_p95_ms{variant, batch_size}                         gauge

A metric object lives in the process that records it; each is created on first use there.
"""

from __future__ import annotations

from typing import Any, Literal

TrialEvent = Literal["started", "finished", "pruned", "failed"]
_FOLD_SECONDS_BOUNDARIES = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]
_made: dict[str, Any] = {}


def _metric(kind: str, name: str, description: str, tags: tuple[str, ...]) -> Any:
    if name not in _made:
        from ray.util import metrics

        if kind == "counter":
            _made[name] = metrics.Counter(name, description=description, tag_keys=tags)
        elif kind == "gauge":
            _made[name] = metrics.Gauge(name, description=description, tag_keys=tags)
        else:
            _made[name] = metrics.Histogram(
                name, description=description, boundaries=_FOLD_SECONDS_BOUNDARIES, tag_keys=tags
            )
    return _made[name]


def trial_event(variant: str, event: TrialEvent) -> None:
    """A trial of ``variant`` started or ended."""
    counter = _metric("counter", "pipeline_trials", "HPO trials by event", ("variant", "event"))
    counter.inc(1.0, tags={"variant": variant, "event": event})


def fold_seconds(variant: str, seconds: float) -> None:
    """One fold of a trial of ``variant`` took ``seconds`` (set-up, training and evaluation)."""
    histogram = _metric(
        "histogram", "pipeline_fold_seconds", "Seconds per cross-validation fold", ("variant",)
    )
    histogram.observe(seconds, tags={"variant": variant})


def best_objective(variant: str, value: float) -> None:
    """The best objective of ``variant`` so far."""
    gauge = _metric("gauge", "pipeline_best_objective", "Best HPO objective so far", ("variant",))
    gauge.set(value, tags={"variant": variant})


def benchmark_p95(variant: str, batch_size: int, milliseconds: float) -> None:
    """p95 latency per batch measured for ``variant``'s best trial."""
    gauge = _metric(
        "gauge",
        "pipeline_benchmark_p95_ms",
        "Benchmark p95 latency per batch (ms)",
        ("variant", "batch_size"),
    )
    gauge.set(milliseconds, tags={"variant": variant, "batch_size": str(batch_size)})
