"""Which of two objective values is better: the one place that knows maximize from minimize.

``Direction`` is a string enum, so configs, JSON records and Optuna all spell it
``"maximize"`` / ``"minimize"``; code asks it (``better``, ``best``, ``ranked``, ``oriented``)
instead of comparing the name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from typing import TypeVar

T = TypeVar("T")


class Direction(str, Enum):
    """Whether larger (``maximize``) or smaller (``minimize``) objective values are better."""

    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"

    def __str__(self) -> str:
        return self.value

    @property
    def sign(self) -> float:
        """+1 for maximize, -1 for minimize: ``sign * value`` is larger the better it is."""
        return 1.0 if self is Direction.MAXIMIZE else -1.0

    @property
    def mode(self) -> str:
        """Ray Tune's name for it: ``max`` or ``min``."""
        return "max" if self is Direction.MAXIMIZE else "min"

    def oriented(self, value: float) -> float:
        """``value`` turned so that larger is better."""
        return self.sign * value

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b`` (NaN is never better, and anything
        that is not NaN beats NaN)."""
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        return self.oriented(a) > self.oriented(b)

    def best(self, items: Iterable[T], key: Callable[[T], float]) -> T | None:
        """The item with the best ``key`` (the first of equals); None when there is none."""
        chosen: T | None = None
        for item in items:
            if chosen is None or self.better(key(item), key(chosen)):
                chosen = item
        return chosen

    def ranked(self, items: Iterable[T], key: Callable[[T], float]) -> list[T]:
        """``items`` best first (a stable sort: equals keep their order)."""
        return sorted(items, key=lambda item: -self.oriented(key(item)))

    def best_value(self, values: Sequence[float]) -> float:
        """The best of ``values`` (not empty)."""
        chosen = self.best(values, float)
        assert chosen is not None, "best_value of no values"
        return chosen

    @property
    def worse_word(self) -> str:
        """How a losing value compares to a winning one: ``lower`` (maximize) or ``higher``."""
        return "lower" if self is Direction.MAXIMIZE else "higher"
