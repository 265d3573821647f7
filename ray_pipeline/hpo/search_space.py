"""The YAML search space as Optuna distributions, and the sampler that draws from them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ray_pipeline.schema import CategoricalParam, FloatParam, IntParam, ParamSpec

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


def make_sampler(kind: Literal["tpe", "random"], seed: int) -> optuna.samplers.BaseSampler:
    """The configured Optuna sampler (``hpo.sampler``), seeded."""
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)
