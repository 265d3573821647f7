"""The benchmark's records: what one actor is asked to measure, and ``benchmark.json``."""

from __future__ import annotations

from pathlib import Path

from ray_pipeline.artifacts import Record
from ray_pipeline.data.encode import Row
from ray_pipeline.hpo.results import TrialRecord
from ray_pipeline.schema import BenchmarkSettings, Task
from ray_pipeline.schema.training import Precision
from ray_pipeline.timing import LatencyStats


class BenchmarkJob(Record):
    """One checkpoint to measure (crosses the Ray boundary as a plain dict)."""

    trial: TrialRecord
    """The trial measured: its variant's best, or another trial on its Pareto front."""
    checkpoint: Path
    """Its best-fold model (``<variant>/best``, ``<variant>/pareto/trial_<n>``)."""
    source: str | None = None
    """Where the actor loads it from: that path, or its copy under ``storage.uri`` (None:
    ``checkpoint``)."""
    task: Task
    settings: BenchmarkSettings
    settings_hash: str
    threads: int
    """Torch intra-op threads: the CPUs the actor reserved (1 on a GPU)."""
    timing_rows: list[Row]
    """Encoded examples that fill the timed batches (tokenized outside the timed region)."""
    test_rows: list[Row] | None = None
    """Encoded ``test_data`` examples, when configured."""
    labels: list[str]
    """Label names by id, as the checkpoint's head orders them."""
    precision: Precision = "auto"
    """What to infer in: ``benchmarking.precision``, else the trial's training precision."""
    max_length: int = 128
    """Tokens per timed input: ``benchmarking.max_length``, else the trial's ``max_length``."""


class BenchmarkResult(Record):
    """``benchmark.json``, written atomically into the variant it measured."""

    trial: TrialRecord
    """The trial measured (as HPO recorded it): the benchmark is current while it is still its
    variant's best."""
    checkpoint: str
    settings_hash: str
    device: str
    """``cpu`` or ``cuda:<n> (<name>)``."""
    precision: str | None = None
    """What the model ran in: fp32, bf16 or fp16 (None: measured before precision existed)."""
    threads: int
    max_length: int
    latency: list[LatencyStats]
    parameters: int
    size_mb: float
    """Bytes on disk of the checkpoint directory / 1e6."""
    test_metrics: dict[str, float] | None = None
    host: str
    pid: int
    actor_id: str
    """The Ray actor that measured it (a pool of several measures in parallel)."""
    started_at: str
    seconds: float
    mlflow_run_id: str | None = None

    def at_batch(self, batch_size: int) -> LatencyStats | None:
        """The timings of ``batch_size``, if it was measured."""
        return next((s for s in self.latency if s.batch_size == batch_size), None)
