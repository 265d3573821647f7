"""The whole configuration schema, in this package. Defaults live here and nowhere else.

Every model forbids unknown keys, is frozen, and documents each field with the
docstring under it (``use_attribute_docstrings``). Relative paths (fields typed
``ConfigPath``) are resolved by ``ray_pipeline.loading`` against the directory of
the file that set them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from ray_pipeline.naming import unsafe_name_reason
from ray_pipeline.run_mode import benchmark_run_mode
from ray_pipeline.schema.base import (
    BenchmarkRunSection,
    ConfigPath,
    PathMarker,
    PositiveInt,
    ReuseRunSection,
    RunSection,
    Section,
    resolved,
)
from ray_pipeline.schema.data import (
    TASK_METRICS,
    BackboneConfig,
    DataConfig,
    ModelConfig,
    RandomInit,
    Task,
)
from ray_pipeline.schema.hpo import (
    RESOLVED_SAMPLER_OPTIONS,
    HpoConfig,
    LatencyObjective,
    ObjectiveConfig,
    RacingConfig,
    SamplerConfig,
    SchedulerConfig,
    StudyCheckpoint,
)
from ray_pipeline.schema.search import CategoricalParam, FloatParam, IntParam, ParamSpec
from ray_pipeline.schema.stages import (
    REMOVED_KEYS,
    BenchmarkConfig,
    BenchmarkSettings,
    ExperimentConfig,
    FinalResources,
    FinalSource,
    FinalTrainingConfig,
    ResourcesConfig,
    SelectionConfig,
    StorageConfig,
    TrackingConfig,
)
from ray_pipeline.schema.training import TrainingParams


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
    storage: StorageConfig = Field(default_factory=StorageConfig)
    """Where workers write checkpoints and models (null uri: under outputs_root)."""

    @model_validator(mode="after")
    def _inherit(self) -> PipelineConfig:
        """Resolve the nulls that mean "as another section", so the config holds the values
        the run uses (``config.resolved.yaml`` and ``validate --show`` print them)."""
        mode = benchmark_run_mode(self.benchmark, self.hpo)  # null: HPO's
        resolved: dict[str, Section] = {
            "benchmark": self.benchmark.model_copy(update={"run": BenchmarkRunSection(mode=mode)})
        }
        if self.selection.objective is None:
            # The search's metric and direction; its latency objective is the search's own
            # (selection weighs latency by its own rules).
            objective = self.hpo.objective.model_copy(update={"latency": None})
            resolved["selection"] = self.selection.model_copy(update={"objective": objective})
        if self.tracking.experiment_name is None:
            name = self.experiment.name
            resolved["tracking"] = self.tracking.model_copy(update={"experiment_name": name})
        validation = self.data.has_validation
        if self.hpo.evaluation is None:
            evaluation = "holdout" if validation else "cv"
            if evaluation == "holdout" and self.hpo.racing.enabled:
                raise ValueError(
                    "hpo.racing stops a trial between cross-validation folds, and with the "
                    "validation split the data gives each trial is fitted once (hpo.evaluation "
                    "resolves to holdout); set hpo.evaluation: cv, or drop hpo.racing"
                )
            resolved["hpo"] = self.hpo.model_copy(update={"evaluation": evaluation})
        if self.final_training.data is None:
            data = "train_and_validation" if validation else "train"
            resolved["final_training"] = self.final_training.model_copy(update={"data": data})
        elif self.final_training.data == "train_and_validation" and not validation:
            raise ValueError(
                "final_training.data: train_and_validation needs a validation split; set "
                "data.validation_file (or a validation entry in data.hf_splits), or use train"
            )
        for field, section in resolved.items():
            object.__setattr__(self, field, section)  # frozen: set while validating
        return self

    @model_validator(mode="after")
    def _study_names_are_safe(self) -> PipelineConfig:
        """The study name template, filled in with each backbone's name, names a directory
        (the template alone is checked with a one-letter name in its place)."""
        template = self.hpo.checkpoint.study_name
        if template is None:
            return self
        for backbone in self.model.backbones:
            name = template.replace("{backbone}", backbone.name)
            reason = unsafe_name_reason(name)
            if reason is not None:
                raise ValueError(
                    f"hpo.checkpoint.study_name {template!r} makes backbone {backbone.name!r} "
                    f"the study name {name!r}, which {reason}; shorten the template or the "
                    "backbone name"
                )
        return self

    @model_validator(mode="after")
    def _objectives_fit_the_task(self) -> PipelineConfig:
        known = TASK_METRICS[self.data.task]
        for where, objective in (
            ("hpo", self.hpo.objective),
            ("selection", self.selection.objective),
        ):
            if objective is not None and objective.metric not in known:
                raise ValueError(
                    f"{where}.objective.metric {objective.metric!r} is not a metric of "
                    f"{self.data.task}; choose from {', '.join(known)}"
                )
        return self

    @model_validator(mode="after")
    def _latency_batch_is_benchmarked(self) -> PipelineConfig:
        sizes = self.benchmark.benchmarking.batch_sizes
        if self.selection.latency_batch_size not in sizes:
            raise ValueError(
                f"selection.latency_batch_size {self.selection.latency_batch_size} is not one of "
                f"benchmark.benchmarking.batch_sizes {sizes}; add it there or pick one of them"
            )
        return self


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation
    for name, field in PipelineConfig.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
}
"""Top-level sections that an experiment file may ``include`` from a file of their own."""


__all__ = [
    "REMOVED_KEYS",
    "RESOLVED_SAMPLER_OPTIONS",
    "SECTIONS",
    "TASK_METRICS",
    "BackboneConfig",
    "BenchmarkConfig",
    "BenchmarkRunSection",
    "BenchmarkSettings",
    "CategoricalParam",
    "ConfigPath",
    "DataConfig",
    "ExperimentConfig",
    "FinalResources",
    "FinalSource",
    "FinalTrainingConfig",
    "FloatParam",
    "HpoConfig",
    "IntParam",
    "LatencyObjective",
    "ModelConfig",
    "ObjectiveConfig",
    "ParamSpec",
    "PathMarker",
    "PipelineConfig",
    "PositiveInt",
    "RacingConfig",
    "RandomInit",
    "ResourcesConfig",
    "ReuseRunSection",
    "RunSection",
    "SamplerConfig",
    "SchedulerConfig",
    "Section",
    "SelectionConfig",
    "StorageConfig",
    "StudyCheckpoint",
    "Task",
    "TrackingConfig",
    "TrainingParams",
    "resolved",
]
