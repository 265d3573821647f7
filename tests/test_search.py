"""The search on a real local Ray cluster: samplers run the smoke study through Tune, a new
variant starts from the earlier one's best, hand-written points and the untuned recipe, a time
budget stops launching trials and a later run continues the same study (searching on a subset
of the rows)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.benchmark.results import BenchmarkResult
from ray_pipeline.cli import main
from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.paths import VariantFiles
from ray_pipeline.selection import SelectionResult
from ray_pipeline.variants import VariantRecord
from tests.conftest import MakeExp
from tests.run_outputs import study_states

pytestmark = pytest.mark.slow

QUICK = ["hpo.k_folds=2", "hpo.training.epochs=1", "tracking.enabled=false"]
"""The smoke study at its cheapest: two folds of one epoch, no MLflow."""

GRID = [
    "hpo.search_space.learning_rate={type: categorical, choices: [0.001, 0.05]}",
    "hpo.search_space.weight_decay={type: float, low: 0.0, high: 0.1, step: 0.1}",
]
"""A finite version of the smoke space, for the grid sampler: 4 combinations."""


def states_of(variant: Path) -> list[str]:
    return [state for _, state in study_states(variant / "study.db")]


def _variant(tmp_path: Path, name: str = "hpo_tiny-bert") -> Path:
    return tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / name


@pytest.mark.parametrize(
    "sampler",
    [
        # Every sampler searches a real Optuna study in test_search_units.py; through Tune
        # here: a model-based one that samples relative to the trials before it, and the grid.
        "{type: tpe, multivariate: true, n_startup_trials: 1}",
        "grid",
    ],
)
def test_samplers_run_the_smoke_study(
    ray_cluster: None, smoke_experiment: MakeExp, tmp_path: Path, sampler: str
) -> None:
    # One trial at a time: the second is the sampler's model-based suggestion (one startup
    # trial), made from the first one's result.
    args = ["hpo", "--config", str(smoke_experiment()), *QUICK, f"hpo.sampler={sampler}"]
    args += ["hpo.num_samples=2", "resources.max_concurrent_trials=1"]
    args += GRID if sampler == "grid" else []
    assert main(args) == 0
    variant = _variant(tmp_path)
    result = read_json(variant / "hpo.json", HpoResult)
    assert [t.state for t in result.trials] == ["COMPLETE", "COMPLETE"]
    first, second = (t.params for t in result.trials)
    assert set(first) == set(second) == {"learning_rate", "weight_decay"}
    assert first != second
    if sampler == "grid":
        for params in (first, second):
            assert params["learning_rate"] in (0.001, 0.05) and params["weight_decay"] in (0, 0.1)
    assert result.best is not None and (variant / "best").is_dir()
    assert not (tmp_path / "outputs" / "t" / "mlflow.db").exists()  # tracking off: no store


def test_a_new_variant_runs_the_earlier_best_the_enqueued_points_and_the_recipe_first(
    ray_cluster: None, smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(smoke_experiment())
    assert main(["hpo", "--config", path, *QUICK, "hpo.num_samples=2", "hpo.sampler=random"]) == 0
    earlier = read_json(_variant(tmp_path) / "hpo.json", HpoResult)
    assert earlier.best is not None
    scores = [t.objective_mean for t in earlier.trials]
    assert len(set(scores)) == 2, scores  # trials that differ: "the best" means something
    # the smoke space starts at 1e-4: the schema's learning rate 5e-5 lies outside it
    assert (
        "defaults_first: not run, the search space leaves out hpo.training's learning_rate 5e-05"
        in capsys.readouterr().out
    )
    assert all(t.enqueued_from is None for t in earlier.trials)

    # a recipe inside the space (learning rate 0.003, weight decay 0) runs after the others
    args = ["hpo", "--config", path, *QUICK, "hpo.num_samples=4", "hpo.run.mode=force_new"]
    args += ["hpo.warm_start=1", "hpo.enqueue=[{learning_rate: 0.0005}]"]
    args += ["hpo.training.learning_rate=0.003"]
    assert main(args) == 0
    out = capsys.readouterr().out
    v2 = read_json(_variant(tmp_path, "hpo_tiny-bert_v2") / "hpo.json", HpoResult)
    first, second, third, fourth = v2.trials
    assert first.params == earlier.best.params
    assert first.enqueued_from == earlier.best.label
    assert f"warm start from {earlier.best.label}" in out
    assert second.params["learning_rate"] == 0.0005 and "weight_decay" in second.params
    assert second.enqueued_from == "hpo.enqueue[0]"
    assert third.params == {"learning_rate": 0.003, "weight_decay": 0.0}
    assert third.enqueued_from == "hpo.training (defaults_first)"
    assert "trial 2 runs hpo.training's values first" in out
    assert fourth.enqueued_from is None  # sampled
    assert all(t.state == "COMPLETE" for t in v2.trials)


class _Holder:
    """An actor that holds the CPUs it was placed with for as long as it lives."""

    def ready(self) -> bool:
        return True


@contextmanager
def _no_cpu_until_asked(study_db: Path, hold_s: float) -> Iterator[None]:
    """Every CPU of the Ray cluster held from now until ``hold_s`` seconds after the study at
    ``study_db`` holds a trial: its searcher asked for it, after starting the time budget's
    clock, and it cannot start (let alone finish) before the CPUs are free again."""
    import ray

    cpus = ray.cluster_resources()["CPU"]  # type: ignore[no-untyped-call]
    holder: Any = ray.remote(num_cpus=cpus)(_Holder).remote()
    assert ray.get(holder.ready.remote(), timeout=120)  # placed: every CPU is taken
    ended = threading.Event()

    def release() -> None:
        try:
            deadline = time.monotonic() + 600  # a search that never asks fails, never hangs
            while not ended.is_set() and time.monotonic() < deadline:
                if study_states(study_db):
                    ended.wait(hold_s)
                    break
                time.sleep(0.05)
        finally:
            ray.kill(holder)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        ended.set()
        thread.join()


def test_a_time_budget_stops_launching_trials_and_a_later_run_continues(
    ray_cluster: None, smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(smoke_experiment())
    base = ["hpo", "--config", path, *QUICK, "hpo.num_samples=3"]
    base += ["resources.max_concurrent_trials=1"]  # the next trial asks after one has finished
    base += ["hpo.max_train_examples=100"]  # the search sees a subset of the 160 rows
    # The budget's clock starts when the first trial is asked; that trial cannot start until
    # 1.5 s later (the test holds every CPU), so it finishes after the 1 s budget is spent
    # however fast the machine trains: when the second would start, the search stops.
    variant = _variant(tmp_path)
    with _no_cpu_until_asked(variant / "study.db", hold_s=1.5):
        assert main([*base, "hpo.time_budget_s=1"]) == 0
    out = capsys.readouterr().out
    stopped = read_json(variant / "hpo.json", HpoResult)
    assert [t.state for t in stopped.trials] == ["COMPLETE"]
    assert stopped.stop_reason is not None
    assert stopped.stop_reason.startswith("time budget of 1 s reached")
    assert "no new trials launched" in out and "a later run continues up to num_samples" in out
    assert read_json(VariantFiles(variant).record, VariantRecord).status == "stopped"
    assert stopped.best is not None and (variant / "best").is_dir()  # usable as it is
    assert stopped.train_examples == 100
    assert all(f.train_examples + f.validation_examples == 100 for f in stopped.trials[0].folds)
    assert "searched on 100 of 160 training examples (hpo.max_train_examples)" in out

    assert main(base) == 0  # reuse_if_exists, no budget: continues the same study
    out = capsys.readouterr().out
    assert "reuse hpo_tiny-bert; 1 of 3 trials finished, running 2" in out
    grown = read_json(variant / "hpo.json", HpoResult)
    assert [t.state for t in grown.trials] == ["COMPLETE"] * 3
    assert grown.trials[0].folds == stopped.trials[0].folds  # not trained again
    assert grown.stop_reason is None
    assert [state for _, state in study_states(variant / "study.db")] == ["COMPLETE"] * 3
    assert read_json(VariantFiles(variant).record, VariantRecord).status == "complete"


def test_latency_as_a_second_objective_benchmarks_and_selects_from_the_pareto_front(
    ray_cluster: None, smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # max_length 8 or 64 tokens: the shorter model is faster and may be less accurate.
    path = str(smoke_experiment(benchmark={"benchmarking": {"batch_sizes": [1], "iterations": 5}}))
    args = ["run", "--stages", "hpo,benchmark,select", "--config", path, *QUICK]
    args += ["hpo.num_samples=3", "hpo.sampler=random", "hpo.objective.latency={iterations: 5}"]
    args += ["hpo.search_space.max_length={type: categorical, choices: [8, 64]}"]
    args += ["benchmark.benchmarking.max_length=null"]  # each trial at its own max_length
    assert main(args) == 0
    variant = _variant(tmp_path)
    result = read_json(variant / "hpo.json", HpoResult)
    assert all(t.latency_ms is not None and t.latency_ms > 0 for t in result.trials)
    assert result.best is not None and result.best.number in result.pareto
    assert states_of(variant) == ["COMPLETE"] * 3
    points = {}
    for trial in result.trials:
        assert trial.objective_mean is not None and trial.latency_ms is not None
        points[trial.number] = (trial.objective_mean, trial.latency_ms)
    for number, (score, latency) in points.items():  # the front: exactly the unbeaten trials
        beaten = any(
            other != (score, latency) and other[0] >= score and other[1] <= latency
            for other in points.values()
        )
        assert (number in result.pareto) == (not beaten), points
    # Every trial on the front has its model kept and its own benchmark, at its max_length.
    for number in result.pareto:
        trial = next(t for t in result.trials if t.number == number)
        best = number == result.best.number
        model = variant / ("best" if best else f"pareto/trial_{number}")
        assert (model / "config.json").is_file(), model
        bench_file = variant / ("benchmark.json" if best else f"benchmarks/trial_{number}.json")
        bench = read_json(bench_file, BenchmarkResult)
        assert bench.trial.number == number and bench.max_length == trial.training.max_length
    selection = read_json(
        tmp_path / "outputs" / "t" / "selection" / "selection.json", SelectionResult
    )
    assert sorted(s.candidate.trial.number for s in selection.candidates) == result.pareto
    # A latency limit only the fastest candidate meets: it wins, and the reasoning says why.
    fastest = min(selection.candidates, key=lambda s: s.candidate.latency_ms).candidate
    limit = f"selection.max_latency_ms={fastest.latency_ms * 1.0001}"
    assert main(["select", "--config", path, *args[5:], limit, "selection.run.mode=force_new"]) == 0
    limited = read_json(
        tmp_path / "outputs" / "t" / "selection" / "selection.json", SelectionResult
    )
    assert limited.winner.trial.number == fastest.trial.number
    assert f"met the limit p95 <= {fastest.latency_ms * 1.0001:g} ms" in limited.reasoning
