"""The whole configuration schema. Defaults live here and nowhere else.

Every model forbids unknown keys, is frozen, and documents each field with the
docstring under it (``use_attribute_docstrings``). Relative paths (fields typed
``ConfigPath``) are resolved by ``ray_pipeline.loading`` against the directory of
the file that set them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ray_pipeline.naming import check_safe_name
from ray_pipeline.run_mode import RunMode


class PathMarker:
    """Marks a field as a path that is resolved against the config file's directory."""


ConfigPath = Annotated[Path, PathMarker()]
PositiveInt = Annotated[int, Field(ge=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# --------------------------------------------------------------------------- run modes


class RunSection(Section):
    mode: RunMode = "reuse_if_exists"
    """reuse_if_exists: reuse the latest variant (resume it if incomplete; create the first
    if none). force_new: create the next variant (_v2, _v3, ...). resume_if_incomplete:
    resume the latest variant if incomplete, else create the next."""


class ReuseRunSection(Section):
    mode: Literal["reuse_if_exists", "force_new"] = "reuse_if_exists"
    """reuse_if_exists: reuse the cached result when its inputs are unchanged.
    force_new: recompute."""


class BenchmarkRunSection(Section):
    mode: Literal["reuse_if_exists", "force_new"] | None = None
    """null: inherit the HPO stage's mode. reuse_if_exists: keep existing benchmark.json
    files. force_new: benchmark again."""


# --------------------------------------------------------------------------- data and model


class DataConfig(Section):
    task: Literal["sequence_classification", "token_classification"] = "sequence_classification"
    """What is predicted: one label per text, or one tag per token (NER)."""
    format: Literal["csv", "jsonl", "parquet", "conll", "huggingface"] = "csv"
    """How the data is stored. ``huggingface`` loads ``hf_name`` with the datasets library."""
    train_file: ConfigPath | None = None
    """Training split file. ``{data_cache}`` expands to the demo data cache directory."""
    validation_file: ConfigPath | None = None
    """Optional validation split file (otherwise cross-validation folds are used)."""
    test_file: ConfigPath | None = None
    """Test split file; when null, ``test_size`` of the training data is carved out."""
    hf_name: str | None = None
    """Hugging Face dataset name (format: huggingface)."""
    hf_config: str | None = None
    """Hugging Face dataset configuration name."""
    text_columns: list[str] = Field(default_factory=lambda: ["text"], min_length=1, max_length=2)
    """Text column(s); two columns make sentence pairs."""
    label_column: str = "label"
    """Label column (sequence classification) or tag column (token classification)."""
    test_size: float = Field(default=0.2, gt=0.0, lt=1.0)
    """Fraction of the training data held out as test when no test split is given."""
    max_train_examples: PositiveInt | None = None
    """Use only the first N training examples after a seeded shuffle (quick runs)."""
    max_test_examples: PositiveInt | None = None
    """Use only the first N test examples after a seeded shuffle (quick runs)."""

    @model_validator(mode="after")
    def _source_given(self) -> DataConfig:
        if self.format == "huggingface" and self.hf_name is None:
            raise ValueError("format huggingface needs hf_name (the dataset name on the Hub)")
        if self.format != "huggingface" and self.train_file is None:
            raise ValueError(f"format {self.format} needs train_file (a path to the file)")
        return self


class RandomInit(Section):
    model_type: str = "bert"
    """transformers model type whose config class builds the random model."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Config overrides, e.g. ``{hidden_size: 32, num_hidden_layers: 2}``."""


class BackboneConfig(Section):
    name: str
    """Short id used in directory, variant and run names (``minilm`` -> ``hpo_minilm``)."""
    hub: str | None = None
    """A Hugging Face Hub model id (needs network on first use)."""
    path: ConfigPath | None = None
    """A local directory holding a saved model and tokenizer."""
    package: str | None = None
    """A Python module whose ``get_model_path()`` returns a local model directory."""
    random: RandomInit | None = None
    """Build a randomly initialised model from a config (tests, offline smoke runs)."""
    trust_remote_code: bool = False
    """Allow model code from the model repository to run (off unless you trust it)."""

    @field_validator("name")
    @classmethod
    def _safe(cls, value: str) -> str:
        return check_safe_name(value, "backbone name")

    @model_validator(mode="after")
    def _one_source(self) -> BackboneConfig:
        given = [k for k in ("hub", "path", "package", "random") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"backbone {self.name!r} needs exactly one of hub, path, package, random "
                f"(got {', '.join(given) or 'none'})"
            )
        return self


class ModelConfig(Section):
    backbones: list[BackboneConfig] = Field(min_length=1)
    """The backbones to tune; each gets its own HPO variants."""

    @field_validator("backbones")
    @classmethod
    def _unique(cls, value: list[BackboneConfig]) -> list[BackboneConfig]:
        names = [b.name for b in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"backbone names must be unique, but {', '.join(dupes)} repeat")
        return value


# --------------------------------------------------------------------------- HPO


class TrainingParams(Section):
    learning_rate: float = Field(default=5e-5, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""
    epochs: PositiveInt = 1
    """Epochs per fold."""
    batch_size: PositiveInt = 16
    """Per-worker batch size."""
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    """Fraction of steps with linear warm-up."""
    max_length: PositiveInt = 128
    """Tokens per example after truncation."""


class FloatParam(Section):
    type: Literal["float"]
    """Parameter kind: float, int or categorical."""
    low: float
    """Lower bound (inclusive)."""
    high: float
    """Upper bound (inclusive)."""
    log: bool = False
    """Sample on a log scale (needs low > 0)."""
    step: float | None = None
    """Discretisation step (not with log)."""

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step)
        return self


class IntParam(Section):
    type: Literal["int"]
    """Parameter kind: float, int or categorical."""
    low: int
    """Lower bound (inclusive)."""
    high: int
    """Upper bound (inclusive)."""
    log: bool = False
    """Sample on a log scale (needs low > 0)."""
    step: PositiveInt = 1
    """Step between values."""

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self.low, self.high, self.log, None if self.step == 1 else self.step)
        return self


class CategoricalParam(Section):
    type: Literal["categorical"]
    """Parameter kind: float, int or categorical."""
    choices: list[str | int | float | bool] = Field(min_length=1)
    """The values to choose from."""


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low > high:
        raise ValueError(f"low <= high must hold, but got low={low} and high={high}")
    if log and low <= 0:
        raise ValueError(f"a log-scale range needs low > 0, but got low={low}")
    if log and step is not None:
        raise ValueError("step and log cannot be used together; drop one of them")


ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class ObjectiveConfig(Section):
    metric: str = "macro_f1"
    """Metric the search optimises (checked against the task's metrics)."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """Whether larger or smaller values are better."""


class SchedulerConfig(Section):
    type: Literal["none", "asha"] = "none"
    """Early stopping of poor trials: none, or ASHA over folds."""
    grace_period: PositiveInt = 1
    """Folds every trial completes before it may be stopped."""
    reduction_factor: float = Field(default=2.0, gt=1)
    """ASHA's halving rate."""


class StudyCheckpoint(Section):
    study_name: str | None = None
    """null = ``hpo_{backbone}``; otherwise a template where ``{backbone}`` is replaced.
    Later variants append ``_v2``, ``_v3``, ..."""
    storage_path: str = "{study_name}/study.db"
    """Where the Optuna study lives, relative to the backbone's HPO directory."""
    storage_backend: Literal["sqlite", "journal"] = "sqlite"
    """SQLite by default; Journal storage for shared filesystems such as NFS."""
    auto_resume: bool = True
    """Under reuse_if_exists, resume an incomplete latest variant (false: refuse instead)."""
    save_only_best: bool = True
    """Keep only the best trial's model checkpoint; delete the others when a variant ends."""

    @field_validator("study_name")
    @classmethod
    def _safe_template(cls, value: str | None) -> str | None:
        if value is not None:
            check_safe_name(value.replace("{backbone}", "b"), "study_name")
        return value

    @field_validator("storage_path")
    @classmethod
    def _inside(cls, value: str) -> str:
        if "{study_name}" not in value:
            raise ValueError("storage_path must contain {study_name} so each variant has its own")
        if value.startswith(("/", "\\")) or ".." in Path(value).parts:
            raise ValueError("storage_path must stay inside the backbone's HPO directory")
        return value


class HpoConfig(Section):
    run: RunSection = Field(default_factory=RunSection)
    """How this stage treats existing variants."""
    num_samples: PositiveInt = 4
    """Trials (hyperparameter sets) per variant."""
    k_folds: int = Field(default=3, ge=2)
    """Cross-validation folds per trial."""
    seed: int = 42
    """Seeds the sampler and the fold splits."""
    sampler: Literal["tpe", "random"] = "tpe"
    """Optuna sampler."""
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    """What the search optimises."""
    training: TrainingParams = Field(default_factory=TrainingParams)
    """Fixed training settings; search-space entries override them per trial."""
    search_space: dict[str, ParamSpec] = Field(min_length=1)
    """Hyperparameters to search, by TrainingParams field name."""
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    """Tune trial scheduler."""
    report_every_epoch: bool = False
    """Report to Tune after every epoch too, not only after every fold."""
    checkpoint: StudyCheckpoint = Field(default_factory=StudyCheckpoint)
    """Study naming and storage."""

    @field_validator("search_space")
    @classmethod
    def _known_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(TrainingParams.model_fields))
        if unknown:
            known = ", ".join(TrainingParams.model_fields)
            raise ValueError(f"unknown hyperparameter(s) {', '.join(unknown)}; choose from {known}")
        return {name: _fit_to_field(name, spec) for name, spec in value.items()}


def _fit_to_field(name: str, spec: Any) -> Any:
    """Check a search-space entry against the TrainingParams field it overrides.

    Bounds and choices must be valid values of that field (so ``learning_rate`` stays > 0);
    an integer field needs an int range or choices; choices are coerced to the field's type
    (YAML reads ``1e-4`` as a string).
    """
    if isinstance(spec, FloatParam) and TrainingParams.model_fields[name].annotation is int:
        raise ValueError(f"{name} takes whole numbers: use type: int or categorical")
    values = spec.choices if isinstance(spec, CategoricalParam) else [spec.low, spec.high]
    coerced = []
    for value in values:
        try:
            coerced.append(getattr(TrainingParams.model_validate({name: value}), name))
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"]
            raise ValueError(f"{name}: {value!r} is not a valid value ({reason})") from None
    if isinstance(spec, CategoricalParam):
        return spec.model_copy(update={"choices": coerced})
    return spec


# --------------------------------------------------------------------------- later stages


class BenchmarkSettings(Section):
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 8], min_length=1)
    """Batch sizes to time."""
    iterations: PositiveInt = 20
    """Timed passes per batch size."""
    warmup_iterations: int = Field(default=5, ge=0)
    """Untimed passes before timing."""
    max_length: PositiveInt = 128
    """Sequence length of the timed inputs."""
    device: Literal["cpu", "cuda"] | None = None
    """null: CUDA if visible, else CPU."""
    test_data: ConfigPath | None = None
    """Optional file whose metrics are measured for each benchmarked checkpoint."""
    benchmark_all_variants: bool = True
    """Benchmark every variant's best trial before selection (false: latest only)."""
    benchmark_strategy: Literal["best_per_variant", "latest_only"] = "best_per_variant"
    """Which variants to benchmark before selection."""


class BenchmarkOutput(Section):
    filename: str = "benchmark.json"
    """File written into each benchmarked variant."""

    @field_validator("filename")
    @classmethod
    def _safe(cls, value: str) -> str:
        return check_safe_name(value, "benchmark output filename")


class BenchmarkConfig(Section):
    run: BenchmarkRunSection = Field(default_factory=BenchmarkRunSection)
    """How existing benchmarks are treated (null inherits the HPO mode)."""
    benchmarking: BenchmarkSettings = Field(default_factory=BenchmarkSettings)
    """What is measured."""
    output: BenchmarkOutput = Field(default_factory=BenchmarkOutput)
    """Where results go."""


class SelectionConfig(Section):
    run: ReuseRunSection = Field(default_factory=ReuseRunSection)
    """Reuse a cached selection when its inputs are unchanged, or recompute."""
    objective: ObjectiveConfig | None = None
    """null: the HPO objective."""
    max_latency_ms: float | None = Field(default=None, gt=0)
    """Hard limit on p95 latency per batch at ``latency_batch_size`` (null: none)."""
    latency_batch_size: PositiveInt = 1
    """Batch size whose latency the rules use (must be benchmarked)."""
    latency_weight: float = Field(default=0.0, ge=0)
    """Weight of normalised latency in a trade-off score (0: objective only)."""


class FinalSource(Section):
    variant: str | None = None
    """Train this HPO variant's trial instead of the selection's winner."""
    trial: int | None = Field(default=None, ge=0)
    """Trial number within ``variant`` (null: its best trial)."""


class FinalTrainingConfig(Section):
    run: RunSection = Field(default_factory=RunSection)
    """How existing final-training variants are treated."""
    source: FinalSource = Field(default_factory=FinalSource)
    """Which trial to refit (default: the selection's winner)."""
    epochs: PositiveInt | None = None
    """null: the trial's epochs."""
    keep_checkpoints: PositiveInt = 2
    """Epoch checkpoints kept."""
    register_model: bool = False
    """Also register the exported model in the MLflow model registry."""


# --------------------------------------------------------------------------- cross-cutting


class TrackingConfig(Section):
    enabled: bool = True
    """Log to MLflow."""
    tracking_uri: str | None = None
    """null: MLFLOW_TRACKING_URI, else sqlite:///<outputs>/mlflow.db."""
    experiment_name: str | None = None
    """null: the experiment's name."""


class ResourcesConfig(Section):
    workers_per_trial: PositiveInt = 1
    """Ray Train DDP workers per trial."""
    cpus_per_worker: float = Field(default=1.0, gt=0)
    """CPUs each worker reserves."""
    gpus_per_worker: float = Field(default=0.0, ge=0)
    """GPUs each worker reserves (0: CPU training with gloo)."""
    max_concurrent_trials: PositiveInt | None = None
    """null: as many as the cluster fits."""


class ExperimentConfig(Section):
    name: str
    """Names ``outputs/<name>/`` and the MLflow experiment."""

    @field_validator("name")
    @classmethod
    def _safe(cls, value: str) -> str:
        return check_safe_name(value, "experiment name")


class PipelineConfig(Section):
    experiment: ExperimentConfig
    """Identity of this experiment."""
    outputs_root: ConfigPath = Path("outputs")
    """Root of all outputs; relative paths in a file resolve against that file's directory,
    the default and command-line values against the working directory."""
    data: DataConfig
    """The dataset."""
    model: ModelConfig
    """The backbones."""
    hpo: HpoConfig
    """Hyperparameter search."""
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    """Inference benchmarks."""
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    """Best-model selection."""
    final_training: FinalTrainingConfig = Field(default_factory=FinalTrainingConfig)
    """Refit and export."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """MLflow."""
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    """Ray resources per trial."""


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation
    for name, field in PipelineConfig.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
}
"""Top-level sections that an experiment file may ``include`` from a file of their own."""
