"""The Optuna-Ray bridge (``hpo/search.StudySearch``, a Ray Tune ``Searcher`` on Optuna's
ask-and-tell API): what each trial's suggest, results and end do to the Optuna study, its
checkpoint and pickling (Tune restores a round with both), the budget, and that a seeded search
suggests what Ray's ``OptunaSearch`` (which the package used before) suggests. Runs the
searcher's callbacks directly, as Tune calls them (no cluster), on real Optuna storages."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from ray.air.constants import TRAINING_ITERATION
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from ray_pipeline.direction import Direction
from ray_pipeline.hpo.search import TRIAL_NUMBER, Budget, OlderSearchState, StudySearch
from ray_pipeline.hpo.search_space import DefineSpace
from ray_pipeline.hpo.trial_report import TrialReport
from ray_pipeline.schema import CategoricalParam, FloatParam, IntParam, ParamSpec
from tests.builders import trial_report

PACKAGE = Path(__file__).resolve().parents[1] / "ray_pipeline"
STUDY = "bridge"
K_FOLDS = 3
SPACE: dict[str, ParamSpec] = {
    "learning_rate": FloatParam(type="float", low=1e-5, high=1e-3, log=True),
    "batch_size": IntParam(type="int", low=8, high=32, step=8),
    "lr_schedule": CategoricalParam(type="categorical", choices=["linear", "cosine"]),
    "warmup_ratio": FloatParam(type="float", low=0.0, high=0.2, when={"lr_schedule": ["cosine"]}),
}
"""Every kind of parameter, one of them conditional."""
NO_BUDGET = Budget(time_budget_s=None, patience=None, direction=Direction.MAXIMIZE)


def _search(
    storage: BaseStorage,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
    latency: bool = False,
    budget: Budget = NO_BUDGET,
) -> StudySearch:
    return StudySearch(
        space=DefineSpace(SPACE),
        sampler=sampler or optuna.samplers.RandomSampler(seed=0),
        storage=storage,
        study_name=STUDY,
        direction=Direction.MAXIMIZE,
        latency=latency,
        k_folds=K_FOLDS,
        budget=budget,
    )


def _result(folds: list[float], latency: float | None = None) -> dict[str, Any]:
    """A Tune result of a trial whose folds scored ``folds`` (one epoch each): its report and
    Tune's iteration counter; with ``latency``, the second objective."""
    report = trial_report(folds)
    if latency is not None:
        report = report.model_copy(update={"latency_ms": latency})
    return report.to_metrics() | {TRAINING_ITERATION: max(len(folds), 1)}


def _config(suggestion: dict[str, Any] | str | None) -> dict[str, Any]:
    assert isinstance(suggestion, dict), suggestion
    return suggestion


def _study(storage: BaseStorage) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=storage)


def _sqlite(tmp_path: Path) -> RDBStorage:
    return RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")


def _storage(kind: str, tmp_path: Path) -> BaseStorage:
    if kind == "in_memory":
        return optuna.storages.InMemoryStorage()
    if kind == "sqlite":
        return _sqlite(tmp_path)
    return JournalStorage(JournalFileBackend(str(tmp_path / "study.log")))


@pytest.fixture(params=["in_memory", "sqlite", "journal"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> BaseStorage:
    """Each storage a variant's study can be in (tests' in-memory one too)."""
    return _storage(request.param, tmp_path)


def test_suggest_results_and_ends_reach_the_optuna_study(storage: BaseStorage) -> None:
    search = _search(storage)
    configs = [_config(search.suggest(f"t{i}")) for i in range(4)]
    assert [c[TRIAL_NUMBER] for c in configs] == [0, 1, 2, 3]
    assert len({c["learning_rate"] for c in configs}) == 4  # one sampler draw each
    search.on_trial_result("t0", _result([]))  # no fold yet: nothing for Optuna
    for done in range(1, K_FOLDS + 1):
        search.on_trial_result("t0", _result([0.5, 0.6, 0.7][:done]))
    search.on_trial_complete("t0", _result([0.5, 0.6, 0.7]))
    search.on_trial_result("t1", _result([0.9]))
    search.on_trial_complete("t1", _result([0.9]))  # a scheduler stopped it after fold 0
    search.on_trial_complete("t2", None, error=True)
    search.on_trial_complete("t3", None)  # stopped before its first report
    # A restored trial re-reports and ends again: ignored, not an error.
    search.on_trial_result("t0", _result([0.5, 0.6, 0.7]))
    search.on_trial_complete("t0", _result([0.5, 0.6, 0.7]))
    trials = _study(storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "FAIL", "PRUNED"]
    assert trials[0].intermediate_values == pytest.approx({1: 0.5, 2: 0.55, 3: 0.6})
    assert trials[0].value == pytest.approx(0.6)
    assert trials[1].intermediate_values == pytest.approx({1: 0.9})
    for config, trial in zip(configs, trials, strict=True):
        assert {**trial.params, TRIAL_NUMBER: trial.number} == config


def test_a_trial_stopped_early_never_becomes_the_best(storage: BaseStorage) -> None:
    search = _search(storage)
    for trial_id in ("t0", "t1"):
        search.suggest(trial_id)
    search.on_trial_result("t1", _result([0.99]))
    search.on_trial_complete("t1", _result([0.99]))  # higher mean, over one fold
    search.on_trial_complete("t0", _result([0.5, 0.6, 0.7]))
    study = _study(storage)
    assert study.best_trial.number == 0 and study.best_value == pytest.approx(0.6)


def test_an_error_fails_the_trial_even_with_values_and_nan_fails_it_too() -> None:
    storage = optuna.storages.InMemoryStorage()
    search = _search(storage)
    for trial_id in ("t0", "t1", "t2"):
        search.suggest(trial_id)
    # Tune passes no result with error=True; OptunaSearch would COMPLETE one that had values.
    search.on_trial_complete("t0", _result([0.5, 0.6, 0.7]), error=True)
    # NaN: OptunaSearch's tell raised (logged) and left the trial RUNNING until the next run.
    nan = trial_report([0.5, 0.6, 0.7]).model_copy(update={"objective": math.nan})
    search.on_trial_complete("t1", nan.to_metrics() | {TRAINING_ITERATION: 3})
    search.on_trial_complete("t2", _result([0.5, 0.6, 0.7]))
    states = [t.state.name for t in _study(storage).get_trials()]
    assert states == ["FAIL", "FAIL", "COMPLETE"]


def test_two_objectives_complete_with_the_latency_and_keep_no_intermediate_values() -> None:
    storage = optuna.storages.InMemoryStorage()
    search = _search(storage, latency=True)
    for trial_id in ("t0", "t1"):
        search.suggest(trial_id)
    search.on_trial_result("t0", _result([0.5], latency=9.0))
    search.on_trial_complete("t0", _result([0.5, 0.6, 0.7], latency=9.0))
    search.on_trial_complete("t1", _result([0.5, 0.6, 0.7]))  # no latency measured: refused
    study = _study(storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    first, second = study.get_trials()
    assert first.state.name == "COMPLETE" and first.values == pytest.approx([0.6, 9.0])
    assert first.intermediate_values == {}
    assert second.state.name == "FAIL"


def _save_and_restore(search: StudySearch, storage: BaseStorage, tmp_path: Path) -> StudySearch:
    """Tune's way: the state saved to the experiment, restored into a new searcher."""
    search.save_to_dir(str(tmp_path), session_str="s")
    restored = _search(storage)
    restored.restore_from_dir(str(tmp_path))
    return restored


def _pickled(search: StudySearch, storage: BaseStorage, tmp_path: Path) -> StudySearch:
    """The searcher as Tune pickles it into the experiment (tuner.pkl)."""
    restored = pickle.loads(pickle.dumps(search))
    assert isinstance(restored, StudySearch)
    return restored


@pytest.mark.parametrize(
    ("restore", "kind"),
    # Not pickle with in_memory: a pickled in-memory storage is a copy (a round's are files).
    [(_save_and_restore, kind) for kind in ("in_memory", "sqlite", "journal")]
    + [(_pickled, kind) for kind in ("sqlite", "journal")],
)
def test_a_restored_search_keeps_its_trials_and_completes_them(
    restore: Callable[[StudySearch, BaseStorage, Path], StudySearch], kind: str, tmp_path: Path
) -> None:
    storage = _storage(kind, tmp_path)
    search = _search(storage)
    configs = [_config(search.suggest(f"t{i}")) for i in range(3)]
    search.on_trial_result("t1", _result([0.7]))
    search.on_trial_complete("t0", _result([0.5, 0.6, 0.7]))
    restored = restore(search, storage, tmp_path)
    assert [restored.suggest(f"t{i}") for i in range(3)] == configs  # known: recorded params
    restored.on_trial_complete("t0", _result([0.9, 0.9, 0.9]))  # told before: harmless
    restored.on_trial_result("t1", _result([0.7, 0.8]))
    restored.on_trial_complete("t1", _result([0.7, 0.8, 0.9]))
    restored.on_trial_complete("t2", None, error=True)
    fresh = _config(restored.suggest("t3"))
    assert fresh[TRIAL_NUMBER] == 3
    # The sampler goes on from where it was, not from its seed (which drew trial 0).
    assert fresh["learning_rate"] != configs[0]["learning_rate"]
    trials = _study(storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "RUNNING"]
    assert trials[0].value == pytest.approx(0.6) and trials[1].value == pytest.approx(0.8)
    assert trials[1].intermediate_values == pytest.approx({1: 0.7, 2: 0.75})


def test_the_search_runs_under_tunes_concurrency_limiter_and_its_checkpoint(
    tmp_path: Path,
) -> None:
    from ray.tune.search import SearchGenerator

    storage = _sqlite(tmp_path)
    limited = ConcurrencyLimiter(_search(storage), max_concurrent=1)
    first = limited.suggest("t0")
    assert isinstance(first, dict) and limited.suggest("t1") is None  # at the limit
    limited.on_trial_complete("t0", _result([0.5, 0.6, 0.7]))
    second = _config(limited.suggest("t1"))
    SearchGenerator(limited).save_to_dir(str(tmp_path), session_str="s")
    again = SearchGenerator(ConcurrencyLimiter(_search(storage), max_concurrent=1))
    again.restore_from_dir(str(tmp_path))
    again.on_trial_complete("t1", _result([0.6, 0.7, 0.8]))
    assert [t.value for t in _study(storage).get_trials()] == pytest.approx([0.6, 0.7])
    assert second[TRIAL_NUMBER] == 1


def test_a_spent_budget_finishes_the_search_but_not_a_trial_it_already_started(
    tmp_path: Path,
) -> None:
    storage = _sqlite(tmp_path)
    patience = Budget(time_budget_s=None, patience=1, direction=Direction.MAXIMIZE)
    search = _search(storage, budget=patience)
    assert isinstance(search.suggest("t0"), dict) and search.stop_reason is None
    search.on_trial_complete("t0", _result([0.6] * 3))  # the best so far
    second = _config(search.suggest("t1"))
    search.on_trial_complete("t1", _result([0.5] * 3))  # no better: patience 1
    assert search.suggest("t2") == Searcher.FINISHED
    assert search.stop_reason == "patience 1: no better objective in the last 1 trials"
    assert search.suggest("t1") == second  # a known trial (restored) still gets its parameters
    assert len(_study(storage).trials) == 2
    (tmp_path / "saved").mkdir()
    restored = _save_and_restore(search, storage, tmp_path / "saved")
    assert restored.stop_reason == search.stop_reason
    assert restored.suggest("t3") == Searcher.FINISHED


# The same seed, the same parameters as Ray's OptunaSearch ---------------------------------


def _optuna_search(
    storage: BaseStorage, sampler: optuna.samplers.BaseSampler, latency: bool
) -> OptunaSearch:
    """OptunaSearch as the package used it (its StudySearch subclass passed these)."""
    metric = [TrialReport.OBJECTIVE, TrialReport.LATENCY] if latency else TrialReport.OBJECTIVE
    return OptunaSearch(
        space=DefineSpace(SPACE),
        metric=metric,
        mode=["max", "min"] if latency else "max",
        sampler=sampler,
        study_name=STUDY,
        storage=storage,
    )


SCRIPT: list[tuple[str, int, str]] = [
    ("suggest", 0, ""),
    ("suggest", 1, ""),
    ("complete", 0, "all"),
    ("suggest", 2, ""),
    ("complete", 1, "stopped"),
    ("suggest", 3, ""),
    ("complete", 2, "error"),
    ("complete", 3, "all"),
    ("suggest", 4, ""),
    ("complete", 4, "all"),
    ("suggest", 5, ""),
]
"""Six suggestions with every way a trial ends in between."""


def _scores(number: int) -> list[float]:
    return [0.5 + 0.05 * number + 0.01 * fold for fold in range(K_FOLDS)]


def _drive(search: Searcher, ours: bool, latency: bool) -> list[dict[str, Any]]:
    """Run ``SCRIPT`` on a searcher, telling it what the old StudySearch told OptunaSearch."""
    suggested: list[dict[str, Any]] = []
    for step, number, how in SCRIPT:
        trial_id = f"t{number}"
        if step == "suggest":
            config = _config(search.suggest(trial_id))
            if ours:
                assert config.pop(TRIAL_NUMBER) == number
            suggested.append(config)
            continue
        scores = _scores(number)[: 1 if how == "stopped" else K_FOLDS]
        timed = 10.0 - number if latency else None
        for done in range(1, len(scores) + 1):  # a result at the end of each fold
            search.on_trial_result(trial_id, _result(scores[:done], timed))
        if how == "error":
            search.on_trial_complete(trial_id, None, error=True)
        elif how == "stopped" and not ours:  # StudySearch told Optuna PRUNED itself
            search.on_trial_complete(trial_id, None)
        else:
            search.on_trial_complete(trial_id, _result(scores, timed))
    return suggested


@pytest.mark.parametrize(
    ("make_sampler", "latency"),
    [
        (lambda: optuna.samplers.TPESampler(seed=7, n_startup_trials=2), False),
        (lambda: optuna.samplers.TPESampler(seed=7, n_startup_trials=2), True),
        (lambda: optuna.samplers.RandomSampler(seed=7), False),
    ],
    ids=["tpe", "tpe-two-objectives", "random"],
)
def test_a_seeded_search_suggests_what_optunasearch_suggested(
    make_sampler: Callable[[], optuna.samplers.BaseSampler], latency: bool
) -> None:
    theirs_storage, ours_storage = (optuna.storages.InMemoryStorage() for _ in range(2))
    theirs = _drive(_optuna_search(theirs_storage, make_sampler(), latency), False, latency)
    ours = _drive(_search(ours_storage, sampler=make_sampler(), latency=latency), True, latency)
    assert ours == theirs and len(ours) == 6
    assert len({c["learning_rate"] for c in ours}) == 6
    states = [[t.state for t in _study(s).get_trials()] for s in (theirs_storage, ours_storage)]
    assert states[0] == states[1]
    values = [[t.values for t in _study(s).get_trials()] for s in (theirs_storage, ours_storage)]
    assert values[0] == values[1]


def _theirs(storage: BaseStorage, sampler: optuna.samplers.BaseSampler) -> Searcher:
    return _optuna_search(storage, sampler, latency=False)


def _ours(storage: BaseStorage, sampler: optuna.samplers.BaseSampler) -> Searcher:
    return _search(storage, sampler=sampler)


def test_a_restored_seeded_search_suggests_what_a_restored_optunasearch_suggested(
    tmp_path: Path,
) -> None:
    suggested = []
    for make in (_theirs, _ours):
        where = tmp_path / make.__name__
        where.mkdir()
        storage = RDBStorage(f"sqlite:///{where / 'study.db'}")
        search = make(storage, optuna.samplers.TPESampler(seed=3, n_startup_trials=2))
        for number in range(3):
            search.suggest(f"t{number}")
            search.on_trial_complete(f"t{number}", _result(_scores(number)))
        search.save_to_dir(str(where), session_str="s")
        again = make(storage, optuna.samplers.TPESampler(seed=3, n_startup_trials=2))
        again.restore_from_dir(str(where))
        configs = [_config(again.suggest(f"t{number}")) for number in range(3, 5)]
        suggested.append([{k: v for k, v in c.items() if k != TRIAL_NUMBER} for c in configs])
    assert suggested[0] == suggested[1]


def test_the_package_reaches_into_no_optunasearch_internals() -> None:
    offending = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "._ot_" in line or "OptunaSearch" in line or "search.optuna" in line
    ]
    assert offending == []


def test_a_searcher_pickled_by_the_older_optunasearch_version_is_refused_by_name() -> None:
    """A round interrupted before the upgrade holds the old searcher's state in tuner.pkl:
    unpickling it says so (``tuning.restore_round`` then starts the round's unfinished trials
    afresh; its finished ones are in the study) instead of an AttributeError on every run."""
    search = StudySearch.__new__(StudySearch)
    older = {"_ot_trials": {}, "_completed_trials": set(), "_study_name": "hpo_b", "_mode": "max"}
    with pytest.raises(OlderSearchState, match="older ray_pipeline version"):
        search.__setstate__(older)
