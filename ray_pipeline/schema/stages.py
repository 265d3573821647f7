"""The sections after HPO (benchmark, selection, final training) and the cross-cutting ones."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from ray_pipeline.naming import check_safe_name
from ray_pipeline.schema.base import (
    BenchmarkRunSection,
    ConfigPath,
    PositiveInt,
    ReuseRunSection,
    RunSection,
    Section,
)
from ray_pipeline.schema.hpo import ObjectiveConfig
from ray_pipeline.schema.training import Precision

MIN_CPUS = 0.1
"""The least CPU share a trial worker, refit worker or benchmark actor may reserve."""


def _enough_cpus(value: float) -> float:
    if value < MIN_CPUS:
        many = f"~{round(1 / value)} of them" if value > 0 else "any number"
        raise ValueError(
            f"reserve at least {MIN_CPUS:g} CPU: each worker or actor is a process that loads "
            f"torch and the model, and {value:g} would let Ray start {many} per core; use 1 "
            "(one per core), and resources.max_concurrent_trials to run fewer trials at once"
        )
    return value


CpuShare = Annotated[float, AfterValidator(_enough_cpus)]
"""CPUs one process reserves in Ray: at least ``MIN_CPUS``."""


class BenchmarkSettings(Section):
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 8], min_length=1)
    """Batch sizes to time."""
    iterations: PositiveInt = 20
    """Timed passes per batch size."""
    warmup_iterations: int = Field(default=5, ge=0)
    """Untimed passes before timing."""
    max_length: PositiveInt | None = 128
    """Sequence length of the timed inputs (null: each trial's own ``max_length``, as when
    latency is an HPO objective and ``max_length`` is searched)."""
    device: Literal["cpu", "cuda"] | None = None
    """null: CUDA if the cluster has GPUs that torch can use (``resources.torch_uses_gpus``),
    else CPU."""
    precision: Precision | None = None
    """Precision of the timed inference (the model is cast to it). null: the precision the
    trial trained in, ``auto`` resolved on the benchmark's device (bf16 on GPUs that have it,
    fp32 elsewhere)."""
    cpus_per_actor: CpuShare = 1.0
    """CPUs each CPU benchmark actor reserves (its torch threads); a CUDA actor takes one GPU.
    As many actors run at once as the cluster fits."""
    test_data: ConfigPath | None = None
    """Optional file whose metrics are measured for each benchmarked checkpoint."""
    benchmark_strategy: Literal["best_per_variant", "latest_only"] = "best_per_variant"
    """Which variants' best trials are benchmarked (and are selection candidates): every
    complete HPO variant's, or each backbone's latest complete variant's."""


class BenchmarkConfig(Section):
    run: BenchmarkRunSection = Field(default_factory=BenchmarkRunSection)
    """How existing benchmarks are treated (a null mode resolves to the HPO stage's)."""
    benchmarking: BenchmarkSettings = Field(default_factory=BenchmarkSettings)
    """What is measured (each result: ``<variant>/benchmark.json``)."""


REMOVED_KEYS: dict[tuple[str, ...], str] = {
    ("benchmark", "benchmarking", "benchmark_all_variants"): (
        "was removed: it repeated benchmark_strategy; delete it (true is "
        "benchmark_strategy: best_per_variant, false is benchmark_strategy: latest_only)"
    ),
    ("benchmark", "output"): (
        "was removed: a benchmark is always written to <variant>/benchmark.json; delete "
        "the output: section"
    ),
}
"""Keys older configs may still hold -> what to do instead (reported as config errors)."""


class SelectionConfig(Section):
    run: ReuseRunSection = Field(default_factory=ReuseRunSection)
    """Reuse a cached selection when its inputs are unchanged, or recompute."""
    objective: ObjectiveConfig | None = None
    """What the winner is chosen on. null resolves to the HPO objective's metric and direction
    (its latency objective stays the search's: see max_latency_ms and latency_weight)."""
    max_latency_ms: float | None = Field(default=None, gt=0)
    """Hard limit on p95 latency per batch at ``latency_batch_size`` (null: none)."""
    latency_batch_size: PositiveInt = 1
    """Batch size whose latency the rules use (must be benchmarked)."""
    latency_weight: float = Field(default=0.0, ge=0)
    """Weight of normalised latency in a trade-off score (0: objective only)."""
    rule: Literal["best", "one_standard_error"] = "best"
    """best: the best objective wins. one_standard_error: every candidate whose objective is
    within one standard error (sample std of the best one's folds / sqrt(folds)) of the best
    one's counts as tied, and the fastest of them (lowest p95) wins."""

    @model_validator(mode="after")
    def _one_trade_off(self) -> SelectionConfig:
        if self.rule == "one_standard_error" and self.latency_weight > 0:
            raise ValueError(
                "rule: one_standard_error already trades the objective for latency; "
                "set latency_weight: 0, or rule: best"
            )
        return self


class FinalSource(Section):
    variant: str | None = None
    """Train this HPO variant's trial instead of the selection's winner."""
    trial: int | None = Field(default=None, ge=0)
    """Trial number within ``variant`` (null: its best trial)."""

    @model_validator(mode="after")
    def _trial_needs_variant(self) -> FinalSource:
        if self.trial is not None and self.variant is None:
            raise ValueError("trial needs variant: name the HPO variant the trial belongs to")
        return self


class FinalResources(Section):
    """The refit's own worker group (docs/final-training.md#resources). null fields are chosen
    from the cluster when final training starts: on GPUs one DDP worker per GPU; on CPUs one
    worker per node of the largest size, training with all of that node's cores as threads."""

    workers: PositiveInt | None = None
    """DDP workers (null: as many as the cluster fits, see above; capped by max_workers)."""
    max_workers: PositiveInt | None = None
    """Upper bound on the workers chosen when ``workers`` is null."""
    cpus_per_worker: CpuShare | None = None
    """CPUs each worker reserves and trains with as torch threads (null: on CPUs the largest
    node's cores; on GPUs ``resources.cpus_per_worker``, at most the CPUs per GPU)."""
    gpus_per_worker: float | None = Field(default=None, ge=0)
    """GPUs each worker reserves (null: 1 when the cluster has GPUs that torch can use, else 0:
    ``resources.torch_uses_gpus``)."""

    @model_validator(mode="after")
    def _whole_gpus(self) -> FinalResources:
        gpus = self.gpus_per_worker
        if gpus is not None and 0 < gpus < 1 and (self.workers or 1) > 1:
            raise ValueError(
                f"gpus_per_worker={gpus:g} with workers={self.workers}: DDP ranks sharing a "
                "GPU fail in NCCL; use gpus_per_worker=1"
            )
        return self


class FinalTrainingConfig(Section):
    run: RunSection = Field(default_factory=RunSection)
    """How existing final-training variants are treated."""
    source: FinalSource = Field(default_factory=FinalSource)
    """Which trial to refit (default: the selection's winner)."""
    epochs: PositiveInt | None = None
    """null: the trial's epochs."""
    data: Literal["train", "train_and_validation"] | None = None
    """What the refit trains on: the training split, or the training and validation splits
    together (every labelled row but the test set). null: train_and_validation when the data
    has a validation split, else train. lineage.json records it with the row counts."""
    keep_checkpoints: PositiveInt = 2
    """Epoch checkpoints kept."""
    register_model: bool = False
    """Also register the exported model in the MLflow model registry."""
    resources: FinalResources = Field(default_factory=FinalResources)
    """The refit's workers, CPUs and GPUs (default: the whole cluster)."""


class TrackingConfig(Section):
    enabled: bool = True
    """Log to MLflow."""
    tracking_uri: str | None = None
    """null: $MLFLOW_TRACKING_URI, else the embedded store
    sqlite:///<outputs_root>/<experiment>/mlflow.db. Artifacts of a store that is not a
    server go to <outputs_root>/<experiment>/mlartifacts."""
    experiment_name: str | None = None
    """The MLflow experiment. null resolves to ``experiment.name``."""


class StorageConfig(Section):
    uri: str | None = None
    """Where trials, final training and benchmark actors write and read checkpoints and
    models, for clusters whose nodes do not share ``outputs_root``: any URI pyarrow
    understands (``s3://bucket/prefix``, ``gs://...``, ``file:///...``). null: under
    ``outputs_root``, which every node must then mount. Credentials come from the environment
    (instance role, ``AWS_*``; ``AWS_ENDPOINT_URL`` for an S3-compatible server)."""

    @field_validator("uri")
    @classmethod
    def _plain_uri(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(uri)
        if not parts.scheme or "://" not in uri:
            raise ValueError("not a URI; write scheme://bucket/prefix (s3://, gs://, file://)")
        if "@" in parts.netloc or parts.query or parts.fragment:
            raise ValueError(
                "no credentials, query or fragment in the URI: credentials come from the "
                "environment (AWS_* variables or the instance role), an S3-compatible "
                "server's address from AWS_ENDPOINT_URL"
            )
        return uri.rstrip("/")


class ResourcesConfig(Section):
    address: str | None = None
    """Ray cluster to connect to (e.g. ``ray://head:10001`` or ``auto``); null: $RAY_ADDRESS
    (set inside ``ray job submit``), else a Ray already running on this machine, else a local
    cluster started for this run."""
    workers_per_trial: PositiveInt = 1
    """Workers per trial: 1 trains inside the Tune trial (unless trial_backend: train); more
    are a Ray Train DDP worker group."""
    cpus_per_worker: CpuShare = 1.0
    """CPUs each worker reserves (at least 0.1)."""
    gpus_per_worker: float = Field(default=0.0, ge=0)
    """GPUs each worker reserves (0: CPU training with gloo)."""
    max_concurrent_trials: PositiveInt | None = None
    """null: as many as the cluster fits."""
    max_failures: int = Field(default=3, ge=0)
    """Retries after a lost worker, actor or node: per HPO trial (Ray Tune; a DDP trial's lost
    worker fails the trial, which Tune retries), per final-training worker group (Ray Train)
    and per benchmark actor. Every retry resumes from the last fold or epoch checkpoint. 0:
    fail at the first loss. 3 suits spot clusters."""
    trial_backend: Literal["auto", "train"] = "auto"
    """auto: a one-worker trial trains inside its Ray Tune trial (a reused process with cached
    data and weights: seconds of start-up), a one-worker final training in one Ray task; more
    workers use a Ray Train worker group (DDP). train: always a Ray Train worker group, also
    for one worker."""
    lend_idle_cores: bool = True
    """HPO: once the search launches no more trials, one-worker CPU trials train with the
    cores finished trials freed on their node (torch threads not reserved in Ray;
    docs/hpo.md#resources). false: every trial keeps exactly its reserved CPUs."""

    @model_validator(mode="after")
    def _whole_gpus_for_ddp(self) -> ResourcesConfig:
        if self.workers_per_trial > 1 and 0 < self.gpus_per_worker < 1:
            raise ValueError(
                f"gpus_per_worker={self.gpus_per_worker:g} with workers_per_trial="
                f'{self.workers_per_trial}: DDP ranks sharing a GPU fail in NCCL ("Duplicate '
                'GPU detected", Ray issue 48012). Use whole GPUs (gpus_per_worker=1) for DDP, '
                "or workers_per_trial=1 to pack several trials on one GPU"
            )
        return self


class ExperimentConfig(Section):
    name: str
    """Names ``outputs/<name>/`` and the MLflow experiment."""

    @field_validator("name")
    @classmethod
    def _safe(cls, value: str) -> str:
        return check_safe_name(value, "experiment name")
