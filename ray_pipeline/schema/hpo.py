"""The HPO section: search space, training settings, objective, scheduler, study storage."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ray_pipeline.naming import check_safe_name
from ray_pipeline.paths import DEFAULT_STUDY_PATH
from ray_pipeline.schema.base import PositiveInt, RunSection, Section

Precision = Literal["auto", "fp32", "bf16", "fp16"]
"""Numeric precision of training (and of inference in the benchmark): ``ray_pipeline.precision``."""


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
    precision: Precision = "auto"
    """auto: bf16 autocast on CUDA GPUs with native bfloat16, fp32 elsewhere (CPUs included).
    fp32, bf16, or fp16 (with loss scaling); a device that cannot run it is refused (exit 2).
    TF32 matmuls are on for every CUDA device."""
    group_by_length: bool = False
    """Batch examples of similar length together (less padding, same examples per epoch):
    shuffle, sort within chunks of up to 50 batches, shuffle the batches. Faster, but batches
    of one length can train worse in short runs (docs/configuration.md#precision-and-padding)."""

    def with_params(self, params: Mapping[str, Any]) -> TrainingParams:
        """These settings with a trial's hyperparameters applied (what the trial trains with)."""
        return TrainingParams.model_validate({**self.model_dump(), **params})


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
    storage_path: str = DEFAULT_STUDY_PATH
    """Where the Optuna study lives, relative to the backbone's HPO directory."""
    storage_backend: Literal["sqlite", "journal"] = "sqlite"
    """SQLite by default; Journal storage for shared filesystems such as NFS."""
    auto_resume: bool = True
    """Under reuse_if_exists, resume an incomplete latest variant (false: refuse instead)."""
    save_only_best: bool = True
    """When the variant completes, its best trial's best-fold model is copied to
    ``<variant>/best``; true: then every trial checkpoint (and ``train/``) is deleted."""
    every_epoch: bool | None = None
    """Checkpoint inside a fold after every epoch (model, optimiser, scheduler), so a retried
    trial loses at most one epoch. null: on when a fold has more than one epoch. Finished
    folds are always checkpointed."""

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
    """Also evaluate the fold's validation set after every epoch and report it to Tune as
    ``epoch_objective`` (every epoch is reported either way; the trial's ``objective`` is always
    the mean over finished folds)."""
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
