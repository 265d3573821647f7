"""The YAML search space as Optuna distributions (and as the define-by-run function that
samples it, conditions included), and the sampler that draws from it."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from ray_pipeline.schema import (
    CategoricalParam,
    FloatParam,
    IntParam,
    ParamSpec,
    SamplerConfig,
    resolved,
)
from ray_pipeline.schema.search import condition_holds, grid_values, in_space, top_of

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution


def to_distribution(spec: ParamSpec) -> BaseDistribution:
    """One search-space entry as an Optuna distribution."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if isinstance(spec, FloatParam):
        return FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, IntParam):
        return IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    assert isinstance(spec, CategoricalParam)
    return CategoricalDistribution(spec.choices)


def to_distributions(space: dict[str, ParamSpec]) -> dict[str, BaseDistribution]:
    """The whole search space, keyed by TrainingParams field name (sorted: stable order)."""
    return {name: to_distribution(space[name]) for name in sorted(space)}


class DefineSpace:
    """The search space as Optuna's define-by-run function (what ``search.StudySearch`` calls
    with each new trial): unconditional parameters first, in name order, then each conditional
    one whose ``when`` holds. A plain class, so Tune can pickle it with the searcher."""

    def __init__(self, space: dict[str, ParamSpec]) -> None:
        self.space = dict(space)
        self.distributions = to_distributions(space)
        self.order = sorted(space, key=lambda name: (space[name].when is not None, name))

    def __call__(self, trial: optuna.Trial) -> None:
        chosen: dict[str, Any] = {}
        for name in self.order:
            when = self.space[name].when or {}
            if all(chosen.get(parent) in values for parent, values in when.items()):
                chosen[name] = _suggest(trial, name, self.distributions[name])


def _suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    low, high, log, step = (
        distribution.low,  # type: ignore[attr-defined]
        distribution.high,  # type: ignore[attr-defined]
        distribution.log,  # type: ignore[attr-defined]
        distribution.step,  # type: ignore[attr-defined]
    )
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, low, high, log=log, step=step)
    return trial.suggest_int(name, low, high, log=log, step=step)


def make_sampler(
    config: SamplerConfig, seed: int, space: dict[str, ParamSpec]
) -> optuna.samplers.BaseSampler:
    """The configured Optuna sampler (``hpo.sampler``), seeded. The schema has already refused
    a space the sampler cannot handle (``schema.hpo.check_search``) and resolved the options
    each sampler takes (``n_startup_trials``, ``population_size``)."""
    import optuna
    from optuna.exceptions import ExperimentalWarning

    def startup() -> int:  # of tpe, gp and cmaes, which take it
        return resolved(config.n_startup_trials, "hpo.sampler.n_startup_trials")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # qmc, gp, tpe's group option
        match config.type:
            case "random":
                return optuna.samplers.RandomSampler(seed=seed)
            case "cmaes":
                return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup())
            case "gp":
                return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup())
            case "qmc":
                return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed)
            case "nsga2":
                size = resolved(config.population_size, "hpo.sampler.population_size")
                return optuna.samplers.NSGAIISampler(seed=seed, population_size=size)
            case "grid":
                grid = {name: list(grid_values(spec) or []) for name, spec in space.items()}
                return optuna.samplers.GridSampler(grid, seed=seed)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=startup(),
            multivariate=config.multivariate,
            group=config.group,
        )


def fit_point(
    space: dict[str, ParamSpec], params: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """``params`` (an earlier variant's trial) made a point of ``space``: parameters the space
    lacks are dropped, numbers outside it clipped and put on its step grid, choices it lacks
    dropped, and conditional parameters whose condition the point does not meet dropped.
    Returns the point and one note per change."""
    point: dict[str, Any] = {}
    notes: list[str] = []
    for name, value in sorted(params.items()):
        spec = space.get(name)
        if spec is None:
            notes.append(f"{name} dropped (not in the search space)")
        elif in_space(spec, value):
            point[name] = value
        elif isinstance(spec, CategoricalParam) or not isinstance(value, int | float):
            notes.append(f"{name}={value!r} dropped (not among the choices)")
        else:
            fitted = _snap(spec, value)
            notes.append(f"{name} {value!r} clipped to {fitted!r}")
            point[name] = fitted
    for name in [n for n in point if not condition_holds(space[n], point)]:
        del point[name]
        notes.append(f"{name} dropped (sampled only when {space[name].when})")
    return point, notes


def _snap(spec: FloatParam | IntParam, value: float) -> float | int:
    """``value`` clipped to the parameter's range and put on its step grid, as its type."""
    top = top_of(spec)
    value = min(max(value, spec.low), top)
    if spec.step:
        value = min(spec.low + round((value - spec.low) / spec.step) * spec.step, top)
    return round(value) if isinstance(spec, IntParam) else float(value)
