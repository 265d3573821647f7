"""The HPO section: search space, objective, sampler, scheduler, study storage (the training
settings: ``schema/training.py``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, ValidationError, field_validator, model_validator

from ray_pipeline.direction import Direction
from ray_pipeline.layout_names import DEFAULT_STUDY_PATH
from ray_pipeline.naming import check_safe_name
from ray_pipeline.schema.base import PositiveInt, RunSection, Section, Seed
from ray_pipeline.schema.search import (
    GRID_LIMIT,
    CategoricalParam,
    FloatParam,
    ParamSpec,
    check_conditions,
    condition_holds,
    grid_size,
    in_space,
)
from ray_pipeline.schema.training import DROPOUT_MASKS_ENV, DropoutMasks, TrainingParams


class LatencyObjective(Section):
    iterations: PositiveInt = 20
    """Timed forward passes (batch 1) whose p95 is the trial's latency."""
    warmup: int = Field(default=3, ge=0)
    """Untimed passes before them."""


class ObjectiveConfig(Section):
    metric: str = "macro_f1"
    """Metric the search optimises (checked against the task's metrics)."""
    direction: Direction = Direction.MAXIMIZE
    """Whether larger or smaller values are better."""
    latency: LatencyObjective | None = None
    """A second objective, minimised: p95 latency (ms) at batch 1 of the trial's fold-0 model,
    timed after that fold on the trial's device and in its precision, on inputs of the trial's
    ``max_length``. The study becomes multi-objective; ``hpo.json`` holds its Pareto front,
    and the benchmark and the selection consider every trial on it."""


SchedulerType = Literal["none", "asha", "hyperband", "median"]


class SchedulerConfig(Section):
    type: SchedulerType = "none"
    """Early stopping of poor trials after any epoch (Ray Tune's schedulers): none; asha;
    hyperband (asynchronous HyperBand: several ASHA brackets); median (the median stopping
    rule). Trials are compared at equal epoch counts on their running score (docs/hpo.md)."""
    grace_period: PositiveInt = 1
    """Epochs every trial trains before it may be stopped, counted over its folds (with 2
    epochs per fold, 3 is fold 1's first epoch)."""
    reduction_factor: float = Field(default=2.0, gt=1)
    """asha and hyperband: the fraction 1/reduction_factor of trials goes on at each rung."""
    brackets: PositiveInt = 3
    """hyperband: the number of brackets (asha is hyperband with one)."""
    min_samples_required: PositiveInt = 3
    """median: trials that must have reached an epoch before one is stopped there."""


class RacingConfig(Section):
    enabled: bool = False
    """Stop a cross-validated trial after a fold (and after an epoch inside one when epochs are
    evaluated: ``report_every_epoch``, or any scheduler) once, on the same folds and epoch, it
    is so far behind the best complete trial that it has under a 5% chance to end more than
    ``margin`` ahead of it; it ends PRUNED (docs/hpo.md#fold-racing). Not part of the study
    key."""
    margin: float | None = Field(default=None, ge=0)
    """The indifference zone (in the metric, on the k-fold mean): how much better than the
    best complete trial a trial must still be able to end to be worth its remaining folds
    (larger: stops sooner; 0: only trials unlikely to beat it at all). null: the best complete
    trial's fold standard deviation."""


SamplerType = Literal["tpe", "random", "cmaes", "gp", "qmc", "nsga2", "grid"]

STARTUP_DEFAULTS: dict[str, int] = {"tpe": 10, "gp": 10, "cmaes": 0}
"""Samplers that take ``n_startup_trials`` (random trials before the model takes over) -> the
value a null resolves to (Optuna's for tpe and gp; none for cmaes, which starts at once)."""
POPULATION_DEFAULTS: dict[str, int] = {"nsga2": 50}
"""Samplers that take ``population_size`` -> the value a null resolves to (Optuna's)."""
RESOLVED_SAMPLER_OPTIONS = ("n_startup_trials", "population_size")
"""Options whose null the schema resolves per sampler (study keys hold them as null at that
value: ``identity.sampler_identity``)."""


class SamplerConfig(Section):
    type: SamplerType = "tpe"
    """Optuna sampler: tpe, random, cmaes (CMA-ES; float/int only), gp (Gaussian process),
    qmc (Sobol quasi-random; float/int only), nsga2, or grid (every combination of
    categorical/int values, and stepped float ranges; at most 100,000). Seeded with
    ``hpo.seed``."""
    n_startup_trials: int | None = Field(default=None, ge=0)
    """tpe, gp and cmaes: random trials before the model takes over (at least 1 for tpe and
    gp). null resolves to 10 for tpe and gp (Optuna's default), 0 for cmaes; other samplers
    keep null."""
    multivariate: bool = False
    """tpe: model the parameters jointly instead of one by one."""
    group: bool = False
    """tpe: with multivariate, model conditional parameters in groups of those sampled together."""
    population_size: int | None = Field(default=None, ge=2)
    """nsga2: individuals per generation. null resolves to 50 (Optuna's default) for nsga2;
    other samplers keep null."""

    @model_validator(mode="after")
    def _options_fit(self) -> SamplerConfig:
        wrong = []
        if self.n_startup_trials is not None and self.type not in STARTUP_DEFAULTS:
            wrong.append("n_startup_trials (tpe, gp, cmaes)")
        if (self.multivariate or self.group) and self.type != "tpe":
            wrong.append("multivariate/group (tpe)")
        if self.population_size is not None and self.type != "nsga2":
            wrong.append("population_size (nsga2)")
        if wrong:
            raise ValueError(f"{self.type} does not take {', '.join(wrong)}")
        if self.group and not self.multivariate:
            raise ValueError("group needs multivariate: true")
        if self.n_startup_trials == 0 and self.type != "cmaes":
            raise ValueError(f"n_startup_trials: {self.type} needs at least 1 (cmaes may take 0)")
        return self

    @model_validator(mode="after")
    def _resolve_options(self) -> SamplerConfig:
        # The config holds the value the sampler is built with (config.resolved.yaml shows it);
        # frozen, so set in place while validating.
        if self.n_startup_trials is None and self.type in STARTUP_DEFAULTS:
            object.__setattr__(self, "n_startup_trials", STARTUP_DEFAULTS[self.type])
        if self.population_size is None and self.type in POPULATION_DEFAULTS:
            object.__setattr__(self, "population_size", POPULATION_DEFAULTS[self.type])
        return self


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
    evaluation: Literal["cv", "holdout"] | None = None
    """How a trial is scored. cv: k-fold cross-validation on the training split (k fits per
    trial). holdout: one fit on the training split, scored on the validation split
    (``data.validation_file`` or a Hugging Face validation split; without one, a stratified
    ``holdout_fraction`` of the training rows). null: holdout when the data has a validation
    split, else cv (docs/hpo.md#cv-or-holdout)."""
    k_folds: int = Field(default=3, ge=2)
    """Cross-validation folds per trial (``evaluation: cv``)."""
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    """``evaluation: holdout`` without a validation split: the fraction of the training rows
    held out to score every trial (stratified by label, seeded with ``hpo.seed``; the same rows
    for every trial)."""
    max_train_examples: PositiveInt | None = None
    """Search on at most this many training examples: a stratified subset seeded with
    ``data.seed``. Final training refits on all of them (``data.max_train_examples`` caps
    every stage)."""
    seed: Seed = 42
    """Seeds the sampler and the fold splits (in [0, 2**32))."""
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    """Optuna sampler: a name (``tpe``) or a mapping with ``type`` and its options."""
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    """What the search optimises."""
    training: TrainingParams = Field(default_factory=TrainingParams)
    """Fixed training settings; search-space entries override them per trial."""
    search_space: dict[str, ParamSpec] = Field(min_length=1)
    """Hyperparameters to search, by TrainingParams field name."""
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    """Tune trial scheduler."""
    racing: RacingConfig = Field(default_factory=RacingConfig)
    """Fold racing: ``true``, or a mapping with ``enabled`` and ``margin``."""
    fold_score: Literal["last", "best"] = "last"
    """A fold's score: its last epoch's, or its best epoch's (every epoch is then evaluated,
    the fold keeps that epoch's model, and final training refits the trial's mean best epoch
    count; docs/hpo.md#best-epoch-scores). Part of the study key when ``best``."""
    report_every_epoch: bool = False
    """Also evaluate the fold's validation set after every epoch and report it to Tune as
    ``epoch_objective`` (every epoch is reported either way; the trial's ``objective`` is always
    the mean over finished folds). On whenever a scheduler is: it compares these scores."""
    time_budget_s: float | None = Field(default=None, gt=0)
    """Stop launching trials this many seconds after this run's first trial started; running
    trials finish. A later run continues up to ``num_samples`` (docs/hpo.md#search-options)."""
    patience: PositiveInt | None = None
    """Stop launching trials after this many finished trials in a row did not improve the
    best objective; running trials finish."""
    warm_start: int = Field(default=0, ge=0)
    """A new variant first runs the best N parameter sets of the latest earlier variant of the
    same backbone (parameters the new space lacks are dropped, values outside it clipped)."""
    enqueue: list[dict[str, Any]] = Field(default_factory=list)
    """Hand-written parameter sets a new variant runs first (after the warm start); each a
    mapping of search-space names to values."""
    defaults_first: bool = True
    """A new variant also runs the untuned recipe, ``hpo.training``'s own values of the
    searched parameters, right after the warm start and ``enqueue`` (once, unless one of them
    is that point), when every one of those values lies in the search space; run to its end, it
    keeps the search from ending below the recipe its user would run without it, by its own
    score. Skipped with the grid sampler, which runs every combination
    (docs/hpo.md#search-options)."""
    checkpoint: StudyCheckpoint = Field(default_factory=StudyCheckpoint)
    """Study naming and storage."""

    @property
    def folds(self) -> int:
        """Fits per trial: ``k_folds`` with cv, one with holdout."""
        return 1 if self.evaluation == "holdout" else self.k_folds

    @model_validator(mode="before")
    @classmethod
    def _machine_dropout_masks(cls, data: Any) -> Any:
        """``training.cpu_dropout_masks`` from $RAY_PIPELINE_CPU_DROPOUT_MASKS where the config
        leaves it out. Applied to configs only: a record's training settings keep the default
        they were written with."""
        masks = os.environ.get(DROPOUT_MASKS_ENV)
        if not masks or not isinstance(data, dict):
            return data
        if masks not in get_args(DropoutMasks):
            raise ValueError(
                f"{DROPOUT_MASKS_ENV}={masks!r} in the environment: set it to torch or numpy, "
                "or unset it"
            )
        training = data.get("training", {})
        if not isinstance(training, dict) or "cpu_dropout_masks" in training:
            return data
        return {**data, "training": {**training, "cpu_dropout_masks": masks}}

    @field_validator("sampler", mode="before")
    @classmethod
    def _sampler_name(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("racing", mode="before")
    @classmethod
    def _racing_switch(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _search_fits(self) -> HpoConfig:
        check_search(self)
        return self

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


SPACE_LIMITS: dict[str, tuple[str, ...]] = {
    "cmaes": ("categorical", "conditional", "one", "two_objectives"),
    "qmc": ("categorical", "conditional"),
    "gp": ("conditional",),
    "nsga2": ("conditional",),
    "grid": ("conditional", "continuous"),
}
"""What each sampler cannot handle: Optuna would silently fall back to random sampling for it."""


def check_search(hpo: HpoConfig) -> None:
    """Refuse combinations the search cannot honour (each message names its key): conditions on
    parameters that are not unconditional categorical ones, a sampler that cannot sample the
    space, a scheduler comparing trials whose epoch counts differ, and enqueued points that lie
    outside the space."""
    check_conditions(hpo.search_space)
    _check_sampler(hpo)
    if hpo.scheduler.type != "none" and "epochs" in hpo.search_space:
        raise ValueError(
            f"scheduler: {hpo.scheduler.type} compares trials at equal epoch counts, so epochs "
            "cannot be searched with it; fix hpo.training.epochs or use scheduler.type: none"
        )
    _check_brackets(hpo)
    _check_enqueued(hpo)
    if hpo.racing.enabled and hpo.evaluation == "holdout":
        raise ValueError(
            "racing: stops a trial between cross-validation folds, and holdout fits each "
            "trial once; use evaluation: cv, or scheduler.type: asha to stop inside the fit"
        )


def _check_sampler(hpo: HpoConfig) -> None:
    """The sampler can sample the space (``SPACE_LIMITS``); grid has enough combinations."""
    space, kind = hpo.search_space, hpo.sampler.type
    problems = {
        "categorical": sorted(n for n, s in space.items() if isinstance(s, CategoricalParam)),
        "conditional": sorted(n for n, s in space.items() if s.when),
        "continuous": sorted(n for n, s in space.items() if grid_size(s) is None),
        "one": list(space) if len(space) < 2 else [],
        "two_objectives": ["objective.latency"] if hpo.objective.latency else [],
    }
    why = {
        "categorical": "samples float and int parameters only, and these are categorical",
        "conditional": "cannot sample conditional parameters",
        "continuous": "needs a finite grid: give these float ranges a step, or choices",
        "one": "needs at least two parameters (Optuna would sample one at random)",
        "two_objectives": "optimises one objective only; drop",
    }
    for limit in SPACE_LIMITS.get(kind, ()):
        if problems[limit]:
            raise ValueError(
                f"sampler: {kind} {why[limit]}: {', '.join(problems[limit])} "
                "(tpe and random take any space)"
            )
    if kind != "grid":
        return
    if hpo.enqueue or hpo.warm_start:
        raise ValueError(
            "sampler: grid runs every combination itself; drop enqueue and warm_start, or use "
            "another sampler"
        )
    size = math.prod(grid_size(spec) or 0 for spec in space.values())
    if hpo.num_samples > size:
        raise ValueError(f"num_samples: {hpo.num_samples} exceeds the grid's {size} combinations")
    if size > GRID_LIMIT:
        raise ValueError(
            f"sampler: grid has more than {GRID_LIMIT:,} combinations (the product of the "
            "parameters' value counts), and Optuna lists them all in memory; take larger "
            "steps or fewer choices, or use tpe or random"
        )


def _check_enqueued(hpo: HpoConfig) -> None:
    """Every enqueued point lies in the space, with each value's condition met."""
    space = hpo.search_space
    for index, point in enumerate(hpo.enqueue):
        for name, value in point.items():
            where = f"enqueue[{index}].{name}"
            if name not in space:
                raise ValueError(f"{where}: not in the search space ({', '.join(sorted(space))})")
            if not in_space(space[name], value):
                raise ValueError(f"{where}: {value!r} is outside the search space")
            if not condition_holds(space[name], point):
                raise ValueError(
                    f"{where}: sampled only when {space[name].when}, which this point does not "
                    "meet, so the value would be ignored"
                )


def _check_brackets(hpo: HpoConfig) -> None:
    """HyperBand's brackets each need a rung at which they can stop a trial (Ray Tune gives a
    bracket ``int(log(max_t / grace) / log(rf)) - s + 1`` rungs, none for too large an ``s``)."""
    scheduler = hpo.scheduler
    if scheduler.type != "hyperband":
        return
    total = hpo.folds * hpo.training.epochs
    grace = min(scheduler.grace_period, total)
    # logs of the ints, not of their ratio: a ratio of ints past 1e308 is no float
    spread = (math.log(total) - math.log(grace)) / math.log(scheduler.reduction_factor)
    most = math.floor(spread + 1e-9) + 1
    if scheduler.brackets > most:
        raise ValueError(
            f"scheduler.brackets: {scheduler.brackets} brackets need more epochs per trial; with "
            f"{total} epochs (k_folds x epochs), grace_period {grace} and reduction_factor "
            f"{scheduler.reduction_factor:g}, at most {most} can stop a trial"
        )
