"""The HPO stage on a real local Ray cluster: results, run modes, resources, DDP workers."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.loading import load_config
from ray_pipeline.paths import VariantFiles
from ray_pipeline.variants import VariantRecord
from tests.builders import add_hpo_variant
from tests.conftest import MakeExp
from tests.run_outputs import embedded_store, kinds_and_states, mlflow_runs, study_states

pytestmark = pytest.mark.slow


def _random_bert(name: str) -> dict[str, Any]:
    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    return {"name": name, "random": {"model_type": "bert", "config": shape}}


def _runs(outputs: Path) -> Counter[tuple[str | None, str]]:
    """(kind, status) counts of the experiment's MLflow runs in the embedded store."""
    return kinds_and_states(mlflow_runs(embedded_store(outputs, "t"), "t"))


def _states(variant: Path) -> list[str]:
    return [state for _, state in study_states(variant / "study.db")]


def test_smoke_hpo_then_reuse_grow_and_force_new(
    ray_cluster: None, smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(smoke_experiment())
    backbone_dir = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert"
    variant = backbone_dir / "hpo_tiny-bert"

    assert main(["hpo", "--config", path]) == 0
    result = read_json(variant / "hpo.json", HpoResult)
    assert [t.number for t in result.trials] == [0, 1, 2]
    assert all(t.state == "COMPLETE" and len(t.folds) == 2 for t in result.trials)
    assert all(0.0 <= f.objective <= 1.0 and f.workers == 1 for t in result.trials for f in t.folds)
    assert result.best is not None and result.best.objective_mean is not None
    assert _states(variant) == ["COMPLETE"] * 3
    assert (variant / "best" / "config.json").is_file()  # the best trial's model
    assert not (variant / "train").exists()  # save_only_best dropped the rest
    assert read_json(VariantFiles(variant).record, VariantRecord).status == "complete"
    assert (tmp_path / "outputs" / "t" / "config.resolved.yaml").is_file()
    assert "running 3" in capsys.readouterr().out
    outputs = tmp_path / "outputs"
    finished = {("variant", "FINISHED"): 1, ("trial", "FINISHED"): 3, ("fold", "FINISHED"): 6}
    assert _runs(outputs) == finished  # 1 parent, 3 trials, 6 folds, none RUNNING

    assert main(["hpo", "--config", path]) == 0  # reuse_if_exists: nothing to run
    assert "3 of 3 trials finished, running 0" in capsys.readouterr().out
    assert _states(variant) == ["COMPLETE"] * 3
    assert [p.name for p in (variant / "tune").iterdir()] == ["round_1"]
    assert _runs(outputs) == finished  # the same parent run, nothing added

    assert main(["hpo", "--config", path, "hpo.num_samples=5"]) == 0  # exactly 2 more
    assert "3 of 5 trials finished, running 2" in capsys.readouterr().out
    assert _states(variant) == ["COMPLETE"] * 5
    grown = read_json(variant / "hpo.json", HpoResult)
    assert [t.number for t in grown.trials] == [0, 1, 2, 3, 4]
    assert grown.trials[0].folds == result.trials[0].folds  # earlier results kept
    grown_runs = {("variant", "FINISHED"): 1, ("trial", "FINISHED"): 5, ("fold", "FINISHED"): 10}
    assert _runs(outputs) == grown_runs  # the new trials under the same parent

    assert main(["hpo", "--config", path, "hpo.search_space.learning_rate.high=0.5"]) == 2
    assert "Changed: hpo.search_space.learning_rate.high" in capsys.readouterr().err

    assert main(["hpo", "--config", path, "hpo.run.mode=force_new", "hpo.num_samples=1"]) == 0
    v2 = backbone_dir / "hpo_tiny-bert_v2"
    assert _states(v2) == ["COMPLETE"]  # a fresh study
    assert sorted(p.name for p in backbone_dir.iterdir()) == ["hpo_tiny-bert", "hpo_tiny-bert_v2"]


def test_infeasible_request_exits_2_fast_and_writes_nothing(
    ray_cluster: None, smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = time.monotonic()
    assert main(["hpo", "--config", str(smoke_experiment()), "resources.workers_per_trial=3"]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert "one trial needs 3 worker(s)" in err and "2 CPUs" in err
    assert not (tmp_path / "outputs").exists()


def test_a_changed_study_of_any_backbone_exits_2_before_any_backbone_trains(
    ray_cluster: None, smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two = {"backbones": [_random_bert("tiny-a"), _random_bert("tiny-b")]}
    path = smoke_experiment(model=two)
    add_hpo_variant(load_config(path, ["hpo.seed=7"]), "tiny-b", 0.6)  # another study
    assert main(["hpo", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "hpo.run.mode: reuse_if_exists would reuse hpo_tiny-b" in err and "hpo.seed" in err
    outputs = tmp_path / "outputs" / "t"
    assert not (outputs / "hpo" / "tiny-a").exists()  # the first backbone did not start
    assert not (outputs / "config.resolved.yaml").exists()


def test_two_ddp_workers_per_trial_with_epoch_reports_and_asha(
    ray_cluster: None, smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    overrides = [
        "resources.workers_per_trial=2",
        "hpo.num_samples=1",
        "hpo.training.epochs=2",
        "hpo.report_every_epoch=true",
        "hpo.scheduler.type=asha",
        "tracking.enabled=false",
    ]
    assert main(["hpo", "--config", str(smoke_experiment()), *overrides]) == 0
    variant = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    (trial,) = read_json(variant / "hpo.json", HpoResult).trials
    assert trial.state == "COMPLETE"
    assert [f.workers for f in trial.folds] == [2, 2]
    assert [f.train_examples for f in trial.folds] == [20, 20]
    assert not (tmp_path / "outputs" / "t" / "mlflow.db").exists()  # tracking off
