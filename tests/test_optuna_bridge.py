"""The Optuna-Ray bridge (``tuning.StudySearch``) against the installed Ray: it relies on
OptunaSearch internals (``OPTUNA_SEARCH_INTERNALS``), so a Ray release that renames them must
fail here, loudly, not change the search silently. Runs the searcher's callbacks directly
(no cluster): suggest -> result -> complete, as Tune would call them."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from ray_pipeline.direction import Direction
from ray_pipeline.errors import PipelineError
from ray_pipeline.hpo.search_space import DefineSpace
from ray_pipeline.hpo.tuning import OPTUNA_SEARCH_INTERNALS, TRIAL_NUMBER, Budget, StudySearch
from ray_pipeline.schema import FloatParam, ParamSpec


def _search(storage: optuna.storages.BaseStorage, **extra: Any) -> StudySearch:
    space: dict[str, ParamSpec] = {
        "learning_rate": FloatParam(type="float", low=1e-5, high=1e-3, log=True)
    }
    extra.setdefault(
        "budget", Budget(time_budget_s=None, patience=None, direction=Direction.MAXIMIZE)
    )
    return StudySearch(
        space=DefineSpace(space),
        metric="objective",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="bridge",
        storage=storage,
        k_folds=3,
        **extra,
    )


def test_the_internals_studysearch_uses_exist_in_the_installed_ray() -> None:
    search = _search(optuna.storages.InMemoryStorage())
    for name in OPTUNA_SEARCH_INTERNALS:
        assert hasattr(search, name), f"OptunaSearch has no {name}: update StudySearch"
    assert isinstance(search._ot_study, optuna.Study)
    assert isinstance(search._ot_trials, dict) and isinstance(search._completed_trials, set)


def test_suggest_complete_and_early_stop_reach_the_optuna_study() -> None:
    storage = optuna.storages.InMemoryStorage()
    search = _search(storage)
    first, second, third = (search.suggest(f"t{i}") for i in range(3))
    assert [c[TRIAL_NUMBER] for c in (first, second, third)] == [0, 1, 2]  # type: ignore[index]
    search.on_trial_result("t0", {"objective": math.nan, "folds_done": 0})  # no fold yet
    search.on_trial_complete("t0", {"objective": 0.6, "folds_done": 3})
    search.on_trial_complete("t1", {"objective": 0.9, "folds_done": 1})  # stopped by ASHA
    search.on_trial_complete("t2", None, error=True)
    # A restored trial re-reports a result Optuna already holds: ignored, not an error.
    search.on_trial_result("t0", {"objective": 0.6, "training_iteration": 3})
    study = optuna.load_study(study_name="bridge", storage=storage)
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "PRUNED", "FAIL"]
    # The early-stopped trial's higher mean over fewer folds must not become the best.
    assert study.best_trial.number == 0 and study.best_value == 0.6


def test_a_ray_without_the_internals_is_refused_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = OptunaSearch.__init__

    def renamed(self: OptunaSearch, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        del self._ot_trials  # what a Ray release renaming it would look like

    monkeypatch.setattr(OptunaSearch, "__init__", renamed)
    with pytest.raises(PipelineError, match="_ot_trials"):
        _search(optuna.storages.InMemoryStorage())


def test_a_spent_budget_finishes_the_search_but_not_a_trial_it_already_started() -> None:
    storage = optuna.storages.InMemoryStorage()
    search = _search(
        storage, budget=Budget(time_budget_s=None, patience=1, direction=Direction.MAXIMIZE)
    )
    first = search.suggest("t0")
    assert isinstance(first, dict) and search.stop_reason is None
    search.on_trial_complete("t0", {"objective": 0.6, "folds_done": 3})  # the best so far
    second = search.suggest("t1")
    assert isinstance(second, dict)
    search.on_trial_complete("t1", {"objective": 0.5, "folds_done": 3})  # no better: patience 1
    assert search.suggest("t2") == Searcher.FINISHED
    assert search.stop_reason == "patience 1: no better objective in the last 1 trials"
    assert search.suggest("t1") == second  # a known trial (restored) still gets its parameters
    assert len(optuna.load_study(study_name="bridge", storage=storage).trials) == 2
