"""Search-space entries (``hpo.search_space``): a float or int range or a list of choices,
optionally conditional on another parameter; the values each can take, as Optuna samples them.
Conditions between entries: ``check_conditions``; what a space and its sampler must satisfy:
``schema.hpo.check_search``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, overload

from pydantic import Field, model_validator

from ray_pipeline.schema.base import PositiveInt, Section


class Conditional(Section):
    when: dict[str, list[str | int | float | bool]] | None = None
    """Sample this parameter only when another (an unconditional categorical one) has one of
    the listed values, e.g. ``{lr_schedule: [cosine]}``; otherwise the trial keeps the
    ``hpo.training`` value."""


class FloatParam(Conditional):
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


class IntParam(Conditional):
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


class CategoricalParam(Conditional):
    type: Literal["categorical"]
    """Parameter kind: float, int or categorical."""
    choices: list[str | int | float | bool] = Field(min_length=1)
    """The values to choose from."""


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if step is not None and not step > 0:  # nan too
        raise ValueError(
            f"step must be > 0 (the distance between values), but got step={step:g}; "
            "give a positive step, or drop it for a continuous range"
        )
    given = {"low": low, "high": high, "step": step}
    endless = [
        f"{k}={v}" for k, v in given.items() if isinstance(v, float) and not math.isfinite(v)
    ]
    if endless:
        raise ValueError(
            f"low, high and step must be finite numbers, but got {', '.join(endless)}; give "
            "the largest and smallest values to try (YAML reads .inf and .nan as numbers)"
        )
    if isinstance(low, float) and not math.isfinite((high - low) / (step or 1.0)):
        what = f"(high - low) / step, with step={step:g}," if step else "high - low"
        raise ValueError(
            f"{what} overflows a float with low={low} and high={high}; narrow the range"
            + (" or take a larger step" if step else "")
        )
    if low > high:
        raise ValueError(f"low <= high must hold, but got low={low} and high={high}")
    if log and low <= 0:
        raise ValueError(f"a log-scale range needs low > 0, but got low={low}")
    if log and step is not None:
        raise ValueError("step and log cannot be used together; drop one of them")


ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


def check_conditions(space: dict[str, ParamSpec]) -> None:
    """A ``when`` names another, unconditional, categorical parameter and its choices."""
    for name, spec in space.items():
        for parent, values in (spec.when or {}).items():
            ref = space.get(parent)
            if not isinstance(ref, CategoricalParam) or ref.when or parent == name:
                raise ValueError(
                    f"search_space.{name}.when: {parent} must be another, unconditional, "
                    "categorical parameter of the search space"
                )
            missing = [v for v in values if v not in ref.choices]
            if missing:
                raise ValueError(
                    f"search_space.{name}.when: {missing} not among the choices of "
                    f"{parent}: {ref.choices}"
                )


GRID_LIMIT = 100_000
"""The most combinations a grid search may have: Optuna's GridSampler lists them in memory."""


def grid_size(spec: ParamSpec) -> int | None:
    """How many values a grid search tries for ``spec`` (None: no finite grid), counted
    without ``len`` (which cannot exceed ``sys.maxsize``)."""
    if isinstance(spec, CategoricalParam):
        return len(spec.choices)
    if isinstance(spec, IntParam):
        return (spec.high - spec.low) // spec.step + 1
    return None if spec.step is None else _steps(spec.low, spec.high, spec.step) + 1


def grid_values(spec: ParamSpec) -> Sequence[Any] | None:
    """Every value a grid search tries for ``spec``, or None when it has no finite grid (a
    float range without ``step``). Ranges are lazy: ``len`` counts them without building a
    list (a range of 10**15 ints is valid for every sampler but grid)."""
    if isinstance(spec, CategoricalParam):
        return list(spec.choices)
    if isinstance(spec, IntParam):
        return range(spec.low, spec.high + 1, spec.step)
    if spec.step is None:
        return None
    return _FloatGrid(spec.low, spec.step, _steps(spec.low, spec.high, spec.step) + 1)


class _FloatGrid(Sequence[float]):
    """``low, low + step, ...`` (``count`` values), computed on access like ``range``."""

    def __init__(self, low: float, step: float, count: int) -> None:
        self._values = range(count)
        self.low, self.step = low, step

    def __len__(self) -> int:
        return len(self._values)

    @overload
    def __getitem__(self, index: int) -> float: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[float]: ...
    def __getitem__(self, index: int | slice) -> float | Sequence[float]:
        if isinstance(index, slice):
            return [self.low + i * self.step for i in self._values[index]]
        return self.low + self._values[index] * self.step


def _steps(low: float, high: float, step: float) -> int:
    """Whole steps from ``low`` that stay within ``high`` (as Optuna narrows a stepped range)."""
    return math.floor((high - low) / step + 1e-9)


def top_of(spec: FloatParam | IntParam) -> float:
    """The largest value the parameter takes: ``high``, or its last step below it."""
    if isinstance(spec, IntParam):  # exact for ints of any size
        return spec.low + (spec.high - spec.low) // spec.step * spec.step
    if spec.step is None:
        return spec.high
    return spec.low + _steps(spec.low, spec.high, spec.step) * spec.step


def in_space(spec: ParamSpec, value: Any) -> bool:
    """Whether ``value`` is one the parameter can take: one of its choices, or a number within
    its bounds and on its step grid."""
    if isinstance(spec, CategoricalParam):
        return value in spec.choices
    if not isinstance(value, int | float) or not spec.low <= value <= top_of(spec):
        return False
    if isinstance(spec, IntParam) and value != int(value):
        return False
    step = spec.step if isinstance(spec, FloatParam) else (spec.step if spec.step > 1 else None)
    if step is None:
        return True
    offset = (value - spec.low) / step
    return abs(offset - round(offset)) < 1e-6


def condition_holds(spec: ParamSpec, point: Mapping[str, Any]) -> bool:
    """Whether a parameter is sampled given the other values of ``point``: it has no ``when``,
    or each parameter ``when`` names has one of the listed values there."""
    return all(point.get(parent) in values for parent, values in (spec.when or {}).items())
