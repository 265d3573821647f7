"""The search's pure pieces, no Ray: every sampler on a real (in-memory) Optuna study, the
define-by-run space with conditions, fitting an earlier variant's parameters into a new space,
the budget, the study key's stability, and `validate` refusing what the search cannot honour."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

import optuna
import pytest

from ray_pipeline.cli import main
from ray_pipeline.data.splits import load_splits
from ray_pipeline.direction import Direction
from ray_pipeline.hpo.keep import pareto_front
from ray_pipeline.hpo.results import TrialRecord
from ray_pipeline.hpo.search import Budget
from ray_pipeline.hpo.search_space import DefineSpace, fit_point, make_sampler
from ray_pipeline.hpo.stage import search_data
from ray_pipeline.hpo.starts import untuned_point
from ray_pipeline.identity import study_key
from ray_pipeline.loading import load_config
from ray_pipeline.schema import HpoConfig, SamplerConfig
from ray_pipeline.schema.search import grid_values
from tests.builders import trial_record, trial_report
from tests.conftest import MakeExp

SPACE: dict[str, Any] = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
    "batch_size": {"type": "int", "low": 8, "high": 16, "step": 8},
}


GRID_LR = {"type": "categorical", "choices": [1e-4, 3e-3, 1e-2]}
"""learning_rate as a grid search takes it: a finite set of values."""


def _hpo(**extra: Any) -> HpoConfig:
    return HpoConfig.model_validate({"search_space": SPACE, **extra})


def _score(params: dict[str, Any]) -> float:
    """A smooth toy objective with its optimum inside the space."""
    return float(-((params["learning_rate"] * 1e3 - 3.0) ** 2) - params["warmup_ratio"])


@pytest.mark.parametrize(
    "sampler",
    [
        {"type": "tpe", "multivariate": True, "group": True, "n_startup_trials": 2},
        "random",
        {"type": "cmaes", "n_startup_trials": 1},
        {"type": "gp", "n_startup_trials": 2},
        "qmc",
        {"type": "nsga2", "population_size": 2},
        "grid",
    ],
)
def test_every_sampler_searches_the_space_seeded(sampler: Any) -> None:
    grid = {"search_space": {**SPACE, "learning_rate": GRID_LR}} if sampler == "grid" else {}
    hpo = _hpo(sampler=sampler, num_samples=4, **grid)

    def run() -> list[dict[str, Any]]:
        study = optuna.create_study(
            direction="maximize", sampler=make_sampler(hpo.sampler, 7, hpo.search_space)
        )
        space = DefineSpace(hpo.search_space)
        for _ in range(4):
            trial = study.ask()
            space(trial)
            study.tell(trial, _score(trial.params))
        return [t.params for t in study.trials]

    first = run()
    assert first == run()  # seeded: the same suggestions again
    assert len({tuple(sorted(p.items())) for p in first}) > 1  # not one point four times
    for params in first:
        assert set(params) == set(SPACE)
        assert 1e-5 <= params["learning_rate"] <= 1e-2
        assert round(params["warmup_ratio"], 9) in (0.0, 0.1, 0.2)
        assert params["batch_size"] in (8, 16)
    expected = type(make_sampler(hpo.sampler, 0, hpo.search_space)).__name__
    name = hpo.sampler.type
    assert expected.lower().startswith({"nsga2": "nsgaii", "gp": "gp"}.get(name, name))


def test_a_conditional_parameter_is_sampled_only_when_its_condition_holds() -> None:
    space = {
        "lr_schedule": {"type": "categorical", "choices": ["linear", "cosine"]},
        "warmup_ratio": {
            "type": "float",
            "low": 0.0,
            "high": 0.2,
            "when": {"lr_schedule": ["cosine"]},
        },
    }
    hpo = HpoConfig.model_validate({"search_space": space, "sampler": "random"})
    study = optuna.create_study(sampler=make_sampler(hpo.sampler, 1, hpo.search_space))
    define = DefineSpace(hpo.search_space)
    seen = set()
    for _ in range(12):
        trial = study.ask()
        define(trial)
        study.tell(trial, 0.0)
        seen.add(trial.params["lr_schedule"])
        assert ("warmup_ratio" in trial.params) == (trial.params["lr_schedule"] == "cosine")
    assert seen == {"linear", "cosine"}  # both branches were exercised


def test_an_earlier_variants_parameters_are_fitted_to_the_new_space() -> None:
    space = _hpo().search_space
    point, notes = fit_point(
        space, {"learning_rate": 0.5, "warmup_ratio": 0.13, "batch_size": 16, "weight_decay": 0.1}
    )
    assert point == {"learning_rate": 1e-2, "warmup_ratio": 0.1, "batch_size": 16}
    assert notes == [
        "learning_rate 0.5 clipped to 0.01",
        "warmup_ratio 0.13 clipped to 0.1",  # onto the step grid
        "weight_decay dropped (not in the search space)",
    ]
    point, notes = fit_point(space, {"batch_size": 14, "warmup_ratio": -1.0})
    assert point == {"batch_size": 16, "warmup_ratio": 0.0}  # 14 is not on the int grid 8, 16
    assert len(notes) == 2
    conditional = HpoConfig.model_validate(
        {
            "search_space": {
                "lr_schedule": {"type": "categorical", "choices": ["linear", "cosine"]},
                "warmup_ratio": {
                    "type": "float",
                    "low": 0.0,
                    "high": 0.23,
                    "step": 0.05,
                    "when": {"lr_schedule": ["cosine"]},
                },
            }
        }
    ).search_space
    point, notes = fit_point(conditional, {"lr_schedule": "cosine", "warmup_ratio": 0.9})
    assert point == {"lr_schedule": "cosine", "warmup_ratio": 0.2}  # the last step below 0.23
    point, notes = fit_point(conditional, {"lr_schedule": "linear", "warmup_ratio": 0.1})
    assert point == {"lr_schedule": "linear"}
    assert notes == ["warmup_ratio dropped (sampled only when {'lr_schedule': ['cosine']})"]
    grid = grid_values(conditional["warmup_ratio"])
    assert grid is not None and [round(v, 9) for v in grid] == [0.0, 0.05, 0.1, 0.15, 0.2]


def test_patience_counts_finished_trials_since_the_last_improvement() -> None:
    def study_of(
        values: list[float | None], direction: Literal["maximize", "minimize"] = "maximize"
    ) -> optuna.Study:
        study = optuna.create_study(direction=direction)
        for value in values:
            state = "PRUNED" if value is None else "COMPLETE"
            study.add_trial(
                optuna.trial.create_trial(
                    state=optuna.trial.TrialState[state], value=value, params={}, distributions={}
                )
            )
        return study

    before = dt.datetime(2000, 1, 1)  # every trial finished in this run
    budget = Budget(time_budget_s=None, patience=2, direction=Direction.MAXIMIZE)
    assert budget.spent(study_of([0.5, 0.7, 0.6]), before) is None  # one trial since the best
    assert budget.spent(study_of([0.5, 0.7, 0.6, None]), before) is not None  # pruned count
    assert budget.spent(study_of([0.5, 0.7, 0.6, 0.8]), before) is None  # improved again
    minimize = Budget(time_budget_s=None, patience=2, direction=Direction.MINIMIZE)
    assert minimize.spent(study_of([0.5, 0.7, 0.6], "minimize"), before) is not None
    assert minimize.spent(study_of([0.5, 0.7, 0.4], "minimize"), before) is None
    # A later run: the earlier run's streak does not count, its best still sets the bar.
    earlier = study_of([0.5, 0.7, 0.6, 0.6])
    assert budget.spent(earlier, before) is not None
    later = dt.datetime.now() + dt.timedelta(seconds=1)
    assert budget.spent(earlier, later) is None
    for value in (0.65, 0.69):  # this run's trials, neither beats 0.7
        earlier.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE, value=value, params={}, distributions={}
            )
        )
    assert budget.spent(earlier, later - dt.timedelta(seconds=1)) is not None
    clock = Budget(time_budget_s=60, patience=None, direction=Direction.MAXIMIZE)
    now = dt.datetime.now()
    assert clock.spent(study_of([]), now - dt.timedelta(seconds=58)) is None
    reason = clock.spent(study_of([]), now - dt.timedelta(seconds=61))
    assert reason is not None and reason.startswith("time budget of 60 s reached after 61 s")


def test_sampler_options_at_their_defaults_keep_the_study_key(smoke_experiment: MakeExp) -> None:
    path = smoke_experiment()
    plain = load_config(path)
    backbone = plain.model.backbones[0]
    as_mapping = load_config(path, ["hpo.sampler={type: tpe}"])
    assert study_key(plain, backbone) == study_key(as_mapping, backbone)
    assert study_key(plain, backbone)["hpo"]["sampler"] == "tpe"
    multivariate = load_config(path, ["hpo.sampler={type: tpe, multivariate: true}"])
    assert study_key(multivariate, backbone) != study_key(plain, backbone)
    assert SamplerConfig().type == "tpe"


@pytest.mark.parametrize(
    ("kind", "startup", "population"),
    [
        ("tpe", 10, None),
        ("gp", 10, None),
        ("cmaes", 0, None),
        ("nsga2", None, 50),
        ("random", None, None),
        ("qmc", None, None),
    ],
)
def test_the_schema_resolves_the_options_each_sampler_takes(
    kind: str, startup: int | None, population: int | None
) -> None:
    """The config holds what the sampler is built with; an explicit value wins."""
    resolved = SamplerConfig.model_validate({"type": kind})
    assert (resolved.n_startup_trials, resolved.population_size) == (startup, population)
    if startup is not None:
        explicit = SamplerConfig.model_validate({"type": kind, "n_startup_trials": 3})
        assert explicit.n_startup_trials == 3
    if population is not None:
        explicit = SamplerConfig.model_validate({"type": kind, "population_size": 8})
        assert explicit.population_size == 8
    with pytest.raises(ValueError, match="tpe needs at least 1"):
        SamplerConfig(type="tpe", n_startup_trials=0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hpo.sampler=cmaes", "cmaes samples float and int parameters only"),
        ("hpo.sampler=grid", "grid needs a finite grid"),
        (
            "hpo.sampler={type: random, n_startup_trials: 3}",
            "random does not take n_startup_trials",
        ),
        ("hpo.sampler={type: tpe, group: true}", "group needs multivariate"),
        ("hpo.sampler=anneal", "hpo.sampler: Input should be 'tpe', 'random', 'cmaes'"),
        ("hpo.scheduler.type=median", None),  # fine: epochs is not searched
        ("hpo.enqueue=[{learning_rate: 5.0}]", "enqueue[0].learning_rate: 5.0 is outside"),
        ("hpo.enqueue=[{dropout_rate: 0.1}]", "enqueue[0].dropout_rate: not in the search space"),
        ("hpo.search_space.weight_decay.when={nope: [1]}", "nope must be another"),
        ("hpo.time_budget_s=0", "hpo.time_budget_s"),
        ("hpo.enqueue=[{weight_decay: 0.05}]", None),
        ("hpo.sampler={type: nsga2}", None),
        ("hpo.scheduler={type: hyperband, brackets: 4}", "scheduler.brackets: 4 brackets need"),
        ("hpo.scheduler={type: hyperband, brackets: 3}", None),
    ],
)
def test_validate_refuses_what_the_search_cannot_honour(
    smoke_experiment: MakeExp,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    override: str,
    message: str | None,
) -> None:
    space = {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        "batch_size": {"type": "categorical", "choices": [8, 16]},
    }
    path = smoke_experiment(hpo={"search_space": space})
    code = main(["validate", "--config", str(path), override])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0, err
    else:
        assert code == 2 and message in err, err
    assert not (tmp_path / "outputs").exists()


def test_a_scheduler_refuses_a_searched_epoch_count(
    smoke_experiment: MakeExp, capsys: pytest.CaptureFixture[str]
) -> None:
    space = {"epochs": {"type": "int", "low": 1, "high": 3}}
    path = smoke_experiment(hpo={"search_space": space, "scheduler": {"type": "asha"}})
    assert main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "asha compares trials at equal epoch counts" in err and "hpo" in err


def test_the_search_may_see_a_stratified_subset_while_the_refit_sees_everything(
    smoke_experiment: MakeExp,
) -> None:
    path = smoke_experiment()
    everything = load_splits(load_config(path).data).train
    capped = load_config(path, ["hpo.max_train_examples=50"])
    searched = load_splits(search_data(capped)).train
    assert len(searched) == 50 < len(everything)
    assert len(load_splits(capped.data).train) == len(everything)  # what final training reads
    ratio = everything.label_counts()  # stratified: the label mix is kept (within one row)
    for label, count in searched.label_counts().items():
        assert abs(count - 50 * ratio[label] / len(everything)) <= 1
    tighter = load_config(path, ["hpo.max_train_examples=50", "data.max_train_examples=30"])
    assert len(load_splits(search_data(tighter)).train) == 30  # the data's own cap wins
    backbone = capped.model.backbones[0]
    assert study_key(capped, backbone)["hpo"]["max_train_examples"] == 50
    assert "max_train_examples" not in study_key(load_config(path), backbone)["hpo"]


def test_points_the_search_would_ignore_or_choke_on_are_refused() -> None:
    grid_space = {**SPACE, "learning_rate": GRID_LR}
    for starts in ({"warm_start": 1}, {"enqueue": [{"batch_size": 8}]}):
        with pytest.raises(ValueError, match="grid runs every combination itself"):
            _hpo(sampler="grid", search_space=grid_space, **starts)
    conditional = {
        **SPACE,
        "lr_schedule": {"type": "categorical", "choices": ["linear", "cosine"]},
        "warmup_ratio": {**SPACE["warmup_ratio"], "when": {"lr_schedule": ["cosine"]}},
    }
    with pytest.raises(ValueError, match=r"enqueue\[0\].warmup_ratio: sampled only when"):
        _hpo(search_space=conditional, enqueue=[{"lr_schedule": "linear", "warmup_ratio": 0.1}])
    _hpo(search_space=conditional, enqueue=[{"lr_schedule": "cosine", "warmup_ratio": 0.1}])
    with pytest.raises(ValueError, match=r"enqueue\[0\].warmup_ratio: 0.15 is outside"):
        _hpo(enqueue=[{"warmup_ratio": 0.15}])  # between the steps 0.1 and 0.2


def test_the_untuned_point_is_hpo_trainings_values_when_the_space_holds_every_one() -> None:
    # SPACE holds the schema's defaults (learning rate 5e-5, warm-up 0, batch 16)
    assert untuned_point(_hpo()) == (
        {"learning_rate": 5e-5, "warmup_ratio": 0.0, "batch_size": 16},
        [],
    )
    # the file's own fixed values are the recipe, not the schema's
    tuned = _hpo(training={"learning_rate": 3e-3, "warmup_ratio": 0.1, "batch_size": 8})
    assert untuned_point(tuned)[0] == {"learning_rate": 3e-3, "warmup_ratio": 0.1, "batch_size": 8}
    # one value outside the space: nothing to run, and the caller is told which
    narrow = {**SPACE, "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}
    assert untuned_point(_hpo(search_space=narrow)) == (
        {"warmup_ratio": 0.0, "batch_size": 16},
        ["learning_rate 5e-05"],
    )
    off_grid = _hpo(training={"warmup_ratio": 0.15})  # between the steps 0.1 and 0.2
    assert untuned_point(off_grid)[1] == ["warmup_ratio 0.15"]
    # a conditional parameter counts only where its condition holds at the recipe's values
    conditional = {
        **SPACE,
        "lr_schedule": {"type": "categorical", "choices": ["linear", "cosine"]},
        "warmup_ratio": {
            "type": "float",
            "low": 0.05,
            "high": 0.2,
            "when": {"lr_schedule": ["cosine"]},
        },
    }
    linear = _hpo(search_space=conditional)  # warm-up 0 is outside, but linear never samples it
    assert untuned_point(linear) == (
        {"learning_rate": 5e-5, "batch_size": 16, "lr_schedule": "linear"},
        [],
    )
    cosine = _hpo(search_space=conditional, training={"lr_schedule": "cosine"})
    assert untuned_point(cosine)[1] == ["warmup_ratio 0.0"]


def _trial(number: int, objective: float, latency: float) -> TrialRecord:
    return trial_record(number, objective, latency_ms=latency)


def test_the_pareto_front_keeps_the_trials_nothing_beats_on_both_objectives() -> None:
    trials = [
        _trial(0, 0.90, 10.0),  # the most accurate
        _trial(1, 0.85, 4.0),  # faster, less accurate: on the front
        _trial(2, 0.84, 6.0),  # beaten by trial 1 on both
        _trial(3, 0.70, 1.0),  # the fastest
        _trial(4, 0.90, 12.0),  # as accurate as 0 but slower
    ]
    assert pareto_front(trials, Direction.MAXIMIZE) == [0, 1, 3]
    # Minimising the metric (a loss) turns the first axis around.
    assert pareto_front(trials, Direction.MINIMIZE) == [3]
    assert pareto_front([_trial(0, 0.5, 1.0), _trial(1, 0.5, 1.0)], Direction.MAXIMIZE) == [0, 1]


def test_latency_as_an_objective_refuses_a_single_objective_sampler() -> None:
    with pytest.raises(ValueError, match="cmaes optimises one objective only"):
        _hpo(sampler="cmaes", objective={"latency": {"iterations": 5}})
    hpo = _hpo(sampler="nsga2", objective={"latency": {}})
    assert hpo.objective.latency is not None and hpo.objective.latency.iterations == 20


class _Trial:
    """What Ray Tune's schedulers read of a trial (pure logic: no trial runs)."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


@pytest.mark.parametrize("kind", ["asha", "hyperband", "median"])
def test_schedulers_stop_poor_trials_but_let_a_finished_one_end(kind: str) -> None:
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    from ray_pipeline.hpo.schedulers import make_scheduler
    from ray_pipeline.schema.hpo import SchedulerConfig

    config = SchedulerConfig.model_validate(
        {"type": kind, "grace_period": 1, "brackets": 1, "min_samples_required": 2}
    )
    scheduler = make_scheduler(config, k_folds=2, epochs=1, mode="max")
    trials = {name: _Trial(name) for name in ("a", "b", "c")}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)

    def report(name: str, step: int, score: float) -> str:
        folds = [score] * step  # one epoch per fold: a fold ends at every step
        result = trial_report(folds, score=score).to_metrics() | {"time_total_s": step}
        return str(scheduler.on_trial_result(None, trials[name], result))

    assert report("a", 1, 0.9) == TrialScheduler.CONTINUE
    assert report("c", 1, 0.95) == TrialScheduler.CONTINUE
    assert report("b", 1, 0.1) == TrialScheduler.STOP  # far behind at the first rung
    # "a" finished its last fold (step 2 = max_t): its own report ends it, nothing stops it.
    assert report("a", 2, 0.95) == TrialScheduler.CONTINUE
    if kind != "median":  # Ray's own ASHA stops a trial at max_t, the case guarded against
        plain: Any = AsyncHyperBandScheduler(
            time_attr="global_step", metric="score", mode="max", max_t=2, grace_period=1
        )
        plain.on_trial_add(None, trials["c"])
        result = trial_report([0.95, 0.95]).to_metrics()
        assert plain.on_trial_result(None, trials["c"], result) == TrialScheduler.STOP
