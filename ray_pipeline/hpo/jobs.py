"""What a trial is asked to do: the part every trial of a variant shares (``StudyJob``, built
once by the HPO stage) and one trial's complete job (``TrialJob``, built once where the trial
starts, ``trial_runs.start``). Both cross Ray boundaries as plain dicts (``model_dump`` in,
``model_validate`` first thing on the other side).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ray_pipeline.direction import Direction
from ray_pipeline.run_tree import Origin
from ray_pipeline.schema import (
    BackboneConfig,
    DataConfig,
    LatencyObjective,
    Task,
    TrainingParams,
)
from ray_pipeline.tracking import RunRef


class StudyJob(BaseModel):
    """What every trial of one HPO variant shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: str
    study_key_hash: str
    parent_run: RunRef | None = None
    """The variant's MLflow run (None: tracking off)."""
    data: DataConfig
    backbone: BackboneConfig
    task: Task
    training: TrainingParams
    """``hpo.training``: the settings before a trial's hyperparameters are applied."""
    k_folds: int
    """Fits per trial: the cross-validation folds, or 1 with holdout."""
    holdout: float | None = None
    """Holdout (``hpo.evaluation``): score the one fit on the validation split, or, without
    one, on this fraction of the training rows (None: cross-validation)."""
    seed: int
    metric: str
    direction: Direction
    report_every_epoch: bool
    fold_score: Literal["last", "best"] = "last"
    """A fold's objective: its last epoch's score, or its best epoch's (``hpo.fold_score``)."""
    every_epoch: bool | None
    """Epoch checkpoints inside a fold (None: when the fold has more than one epoch)."""
    latency: LatencyObjective | None = None
    """Time the fold-0 model (the search's second objective), or not."""


class TrialJob(BaseModel):
    """Everything the fold loop needs for one trial."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study: StudyJob
    trial: int
    """The Optuna trial number."""
    params: dict[str, Any]
    """The trial's hyperparameters."""
    trial_key_hash: str
    trial_run: RunRef | None = None
    """The trial's MLflow run, parent of the fold runs (None: tracking off)."""

    @property
    def training(self) -> TrainingParams:
        """The settings this trial trains with."""
        return self.study.training.with_params(self.params)

    def origin(self) -> Origin:
        """This trial, as its MLflow runs are tagged."""
        return Origin(
            backbone=self.study.backbone.name,
            variant=self.study.variant,
            study_key_hash=self.study.study_key_hash,
            trial=self.trial,
            trial_key_hash=self.trial_key_hash,
        )

    @property
    def evaluates_every_epoch(self) -> bool:
        """Every epoch of a fold is evaluated: reported to Tune, or scored (best epoch)."""
        return self.study.report_every_epoch or self.study.fold_score == "best"

    @property
    def epoch_checkpoints(self) -> bool:
        every = self.study.every_epoch
        return every if every is not None else self.training.epochs > 1
