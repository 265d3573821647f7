"""The HPO stage on a real local Ray cluster: results, run modes, resources, DDP workers; and the
fold loop's choice of a trial's best fold, on fold scores given by the test, and its tracking
of a fold a retry trained again."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest

from ray_pipeline import run_tree, tracking
from ray_pipeline.artifacts import read_json
from ray_pipeline.benchmark.results import BenchmarkResult
from ray_pipeline.cli import main
from ray_pipeline.data.encode import encode
from ray_pipeline.data.splits import fold_indices, load_splits
from ray_pipeline.direction import Direction
from ray_pipeline.final.results import FinalMetrics, Lineage
from ray_pipeline.hpo.results import FoldState, HpoResult, TrialRecord, read_hpo
from ray_pipeline.hpo.trial_report import fold_run_metrics
from ray_pipeline.hpo.worker import _track_fold, _with_fold
from ray_pipeline.loading import load_config
from ray_pipeline.paths import VariantFiles
from ray_pipeline.run_tree import Origin
from ray_pipeline.schema import PipelineConfig
from ray_pipeline.selection import SelectionResult
from ray_pipeline.training import evaluate
from ray_pipeline.variants import VariantRecord
from tests.builders import add_hpo_variant, fold_result
from tests.conftest import MakeExp
from tests.run_outputs import embedded_store, kinds_and_states, mlflow_runs, study_states

if TYPE_CHECKING:
    from mlflow.entities import Run


def _random_bert(name: str) -> dict[str, Any]:
    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    return {"name": name, "random": {"model_type": "bert", "config": shape}}


def _runs(outputs: Path) -> Counter[tuple[str | None, str]]:
    """(kind, status) counts of the experiment's MLflow runs in the embedded store."""
    return kinds_and_states(mlflow_runs(embedded_store(outputs, "t"), "t"))


def _states(variant: Path) -> list[str]:
    return [state for _, state in study_states(variant / "study.db")]


def _fold_argmax(trial: TrialRecord) -> int:
    scores = [f.objective for f in trial.folds]
    return max(range(len(scores)), key=scores.__getitem__)


def _assert_best_model_is_the_best_fold(config: PipelineConfig, variant: Path) -> TrialRecord:
    """Check the ranking of ``variant``'s complete search and return its best trial: the best
    trial is the argmax of the complete trials, each trial's ``best_fold`` the argmax of its
    folds, and ``best/`` holds that fold's model: evaluated on that fold's validation rows it
    scores exactly what the fold recorded (another fold's or trial's model would not)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result = read_json(variant / "hpo.json", HpoResult)
    complete = [t for t in result.trials if t.state == "COMPLETE"]
    assert all(t.best_fold == _fold_argmax(t) for t in complete), complete
    best = max(complete, key=lambda t: t.objective_mean or 0.0)
    assert result.best is not None and result.best.number == best.number, result.best
    # Recorded relative to the variant (the tree may move), read back as a place in this tree.
    assert result.best_checkpoint == "best" == result.best.checkpoint
    located = read_hpo(VariantFiles(variant))
    assert located is not None and located.best_checkpoint == str(variant / "best")
    assert best.best_fold is not None
    fold = best.folds[best.best_fold]
    splits = load_splits(config.data)
    model = AutoModelForSequenceClassification.from_pretrained(variant / "best")
    tokenizer = AutoTokenizer.from_pretrained(variant / "best")
    rows = encode(tokenizer, splits.train, splits.label2id, best.training.max_length)
    _, val = fold_indices(len(rows), splits.train.strata, result.k_folds, best.seed, fold.fold)
    scores = evaluate(
        model,
        [rows[i] for i in val],
        splits.labels,
        config.data.task,
        max(best.training.batch_size, 32),
        int(tokenizer.pad_token_id or 0),
    )
    assert scores == fold.metrics, (scores, fold.metrics)
    return best


def _curves(outputs: Path, run: Run) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of each metric a run logged at more than step 0: its learning curves."""
    from mlflow import MlflowClient

    client = MlflowClient(embedded_store(outputs, "t"))
    histories = {k: client.get_metric_history(run.info.run_id, k) for k in run.data.metrics}
    curves = {k: sorted((m.step, m.value) for m in h) for k, h in histories.items()}
    return {k: c for k, c in curves.items() if any(step for step, _ in c)}


def _assert_fold_curves(outputs: Path, trial: TrialRecord) -> None:
    """Each fold of ``trial`` recorded every epoch (hpo.json), the last one scored with the
    fold's objective, and its MLflow run holds the same curves, step = epoch; the experiment
    is tagged to open on its runs in MLflow 3's UI."""
    epochs = trial.training.epochs
    runs = mlflow_runs(embedded_store(outputs, "t"), "t")
    fold_runs = {
        int(r.data.tags["ray_pipeline.fold"]): r
        for r in runs
        if r.data.tags["ray_pipeline.kind"] == "fold"
    }
    for fold in trial.folds:
        history = fold.history
        assert [p.epoch for p in history] == list(range(1, epochs + 1)), history
        assert history[-1].train_loss == fold.train_loss
        # The smoke search has no scheduler: only the last epoch is evaluated.
        assert [p.validation for p in history] == [None] * (epochs - 1) + [fold.objective]
        assert all(p.learning_rate is not None and p.learning_rate >= 0 for p in history)
        assert all(p.step_seconds is not None and p.step_seconds > 0 for p in history)
        curves = _curves(outputs, fold_runs[fold.fold])
        assert curves == {
            "train_loss": [(p.epoch, p.train_loss) for p in history],
            "validation_macro_f1": [(epochs, fold.objective)],
            "learning_rate": [(p.epoch, p.learning_rate) for p in history],
            "step_seconds": [(p.epoch, p.step_seconds) for p in history],
        }
    from mlflow import MlflowClient

    found = MlflowClient(embedded_store(outputs, "t")).get_experiment_by_name("t")
    assert found is not None
    assert found.tags["mlflow.experimentKind"] == "custom_model_development"


def _assert_run_tree(outputs: Path, runs: list[Run]) -> None:
    """The variant's run is the parent of every trial run, each trial run the parent of its
    fold runs; every run carries its identity (trial and fold runs their trial's), the parent
    names the best trial and holds the resolved config and hpo.json."""
    from mlflow import MlflowClient

    (parent,) = [r for r in runs if r.data.tags["ray_pipeline.kind"] == "variant"]
    trials = [r for r in runs if r.data.tags["ray_pipeline.kind"] == "trial"]
    assert all(t.data.tags["mlflow.parentRunId"] == parent.info.run_id for t in trials)
    by_id = {t.info.run_id: t for t in trials}
    folds = [r for r in runs if r.data.tags["ray_pipeline.kind"] == "fold"]
    assert all(f.data.tags["mlflow.parentRunId"] in by_id for f in folds)
    for run in runs:
        tags = run.data.tags
        assert tags["ray_pipeline.stage"] == "hpo" and tags["ray_pipeline.backbone"] == "tiny-bert"
        assert tags["ray_pipeline.variant"] == "hpo_tiny-bert"
        assert len(tags["ray_pipeline.study_key_hash"]) == 64
        if tags["ray_pipeline.kind"] != "variant":
            assert len(tags["ray_pipeline.trial_key_hash"]) == 64 and "ray_pipeline.trial" in tags
        if tags["ray_pipeline.kind"] == "fold":
            assert tags["ray_pipeline.fold"] in {"0", "1"}
    for fold in folds:
        trial = by_id[fold.data.tags["mlflow.parentRunId"]]
        assert fold.data.tags["ray_pipeline.trial"] == trial.data.tags["ray_pipeline.trial"]
        assert (
            fold.data.tags["ray_pipeline.trial_key_hash"]
            == trial.data.tags["ray_pipeline.trial_key_hash"]
        )
    assert parent.data.tags["ray_pipeline.best_trial_key_hash"] in {
        t.data.tags["ray_pipeline.trial_key_hash"] for t in trials
    }
    artifacts = MlflowClient(embedded_store(outputs, "t")).list_artifacts(parent.info.run_id)
    assert {a.path for a in artifacts} == {"config.resolved.yaml", "hpo.json"}


def _assert_final_curves_and_errors(outputs: Path, metrics: FinalMetrics, lineage: Lineage) -> None:
    """The refit's run has a learning curve point per epoch; metrics.json scores every label
    and its confusion matrix counts every test example."""
    epochs = lineage.training.epochs
    assert [e.epoch for e in metrics.epochs] == list(range(epochs))
    assert all(e.learning_rate is not None and (e.step_seconds or 0) > 0 for e in metrics.epochs)
    (run,) = [
        r
        for r in mlflow_runs(embedded_store(outputs, "t"), "t")
        if r.data.tags.get("ray_pipeline.stage") == "final"
    ]
    curves = _curves(outputs, run)
    assert curves["train_loss"] == [(e.epoch + 1, e.train_loss) for e in metrics.epochs]
    assert curves["learning_rate"] == [(e.epoch + 1, e.learning_rate) for e in metrics.epochs]
    assert [step for step, _ in curves["step_seconds"]] == list(range(1, epochs + 1))
    labels = lineage.labels
    assert list(metrics.per_class) == labels
    assert sum(s.support for s in metrics.per_class.values()) == metrics.test_examples
    macro = sum(s.f1 for s in metrics.per_class.values()) / len(labels)
    assert macro == pytest.approx(metrics.test_metrics["macro_f1"])
    assert metrics.confusion is not None and metrics.confusion.labels == labels
    counts = metrics.confusion.counts
    assert sum(map(sum, counts)) == metrics.test_examples
    correct = sum(counts[i][i] for i in range(len(labels)))
    assert correct / metrics.test_examples == pytest.approx(metrics.test_metrics["accuracy"])


HOPELESS_A, HOPELESS_B, GOOD = 0.09, 0.05, 0.003
"""Learning rates of the smoke space that differ by construction: 3e-2 and more wreck the tiny
pre-trained model (it ends near the majority class, or worse), 1e-4 to ~3e-3 trains it well
(config/hpo/smoke.yaml). Only a good rate is ever asked to beat another: two wrecked models may
tie or swap on another CPU, so they are never ordered against each other."""


def _points(*rates: float) -> str:
    """``hpo.enqueue`` of one point per learning rate (weight decay 0: nothing left to sample)."""
    return (
        "hpo.enqueue=["
        + ", ".join(f"{{learning_rate: {r}, weight_decay: 0.0}}" for r in rates)
        + "]"
    )


@pytest.mark.slow
def test_smoke_hpo_ranks_reuses_grows_and_feeds_the_later_stages(
    ray_cluster: None, smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every trial's parameters are pinned (hpo.enqueue, written into the study when the first
    # run creates it: trial n is point n on any machine), so the order asserted below holds by
    # construction, whatever the CPU, its threads or the seed: trial 0 and the grown study's
    # trial 1 are hopeless, trial 2 is good. The best moves from trial 0 to the new trial 2,
    # past the new trial 1 that is worse. Points beyond num_samples wait in the study (WAITING)
    # until it grows.
    path = str(smoke_experiment(hpo={"num_samples": 1}))
    config = load_config(Path(path))
    outputs = tmp_path / "outputs"
    backbone_dir = outputs / "t" / "hpo" / "tiny-bert"
    variant = backbone_dir / "hpo_tiny-bert"

    assert main(["hpo", "--config", path, _points(HOPELESS_A, HOPELESS_B, GOOD)]) == 0
    result = read_json(variant / "hpo.json", HpoResult)
    assert [(t.number, t.state) for t in result.trials] == [
        (0, "COMPLETE"),
        (1, "WAITING"),
        (2, "WAITING"),
    ]
    (first,) = [t for t in result.trials if t.state == "COMPLETE"]
    assert first.params == {"learning_rate": HOPELESS_A, "weight_decay": 0.0}
    assert first.enqueued_from == "hpo.enqueue[0]" and len(first.folds) == 2
    assert all(0.0 <= f.objective <= 1.0 and f.workers == 1 for f in first.folds)
    assert _assert_best_model_is_the_best_fold(config, variant).number == 0
    waiting = ["COMPLETE", "WAITING", "WAITING"]
    assert _states(variant) == waiting
    assert not (variant / "train").exists()  # save_only_best dropped the rest
    assert read_json(VariantFiles(variant).record, VariantRecord).status == "complete"
    assert (outputs / "t" / "config.resolved.yaml").is_file()
    assert "running 1" in capsys.readouterr().out
    finished = {("variant", "FINISHED"): 1, ("trial", "FINISHED"): 1, ("fold", "FINISHED"): 2}
    assert _runs(outputs) == finished  # 1 parent, 1 trial, 2 folds, none RUNNING
    _assert_fold_curves(outputs, first)

    assert main(["hpo", "--config", path]) == 0  # reuse_if_exists: nothing to run
    assert "1 of 1 trials finished, running 0" in capsys.readouterr().out
    assert _states(variant) == waiting
    assert [p.name for p in (variant / "tune").iterdir()] == ["round_1"]
    assert _runs(outputs) == finished  # the same parent run, nothing added

    assert main(["hpo", "--config", path, "hpo.num_samples=3"]) == 0  # exactly 2 more
    assert "1 of 3 trials finished, running 2" in capsys.readouterr().out
    assert _states(variant) == ["COMPLETE"] * 3
    grown = read_json(variant / "hpo.json", HpoResult)
    assert [t.number for t in grown.trials] == [0, 1, 2]
    rates = [t.params["learning_rate"] for t in grown.trials]
    assert rates == [HOPELESS_A, HOPELESS_B, GOOD]  # the waiting points, in their order
    assert grown.trials[0].folds == result.trials[0].folds  # earlier results kept
    scores = [t.objective_mean or 0.0 for t in grown.trials]
    assert scores[2] > max(scores[0], scores[1]), scores  # good beats both hopeless ones
    best = _assert_best_model_is_the_best_fold(config, variant)
    assert best.number == 2  # the best moved to the better new trial, best/ with it
    grown_runs = {("variant", "FINISHED"): 1, ("trial", "FINISHED"): 3, ("fold", "FINISHED"): 6}
    assert _runs(outputs) == grown_runs  # the new trials under the same parent
    _assert_run_tree(outputs, mlflow_runs(embedded_store(outputs, "t"), "t"))

    # The later stages consume that best trial, not the first one.
    later = ["run", "--stages", "benchmark,select,final", "--config", path, "hpo.num_samples=3"]
    assert main(later) == 0
    assert read_json(variant / "benchmark.json", BenchmarkResult).trial.number == 2
    selection = read_json(outputs / "t" / "selection" / "selection.json", SelectionResult)
    # hpo.json holds its checkpoint relative to the variant; a later stage's copy of the
    # record holds the place it read it as (VariantFiles.located).
    located = best.model_copy(update={"checkpoint": str(variant / "best")})
    assert selection.winner.trial == located
    final = outputs / "t" / "final" / "tiny-bert" / "final_tiny-bert"
    lineage = read_json(final / "lineage.json", Lineage)
    assert lineage.source.trial == located and lineage.training == best.training
    metrics = read_json(final / "metrics.json", FinalMetrics)
    assert metrics.majority_rate is not None  # the refit learned: it beats the majority class
    assert metrics.test_metrics["accuracy"] > metrics.majority_rate + 0.2, metrics
    _assert_final_curves_and_errors(outputs, metrics, lineage)
    assert "(majority class" in capsys.readouterr().out

    assert main(["hpo", "--config", path, "hpo.search_space.learning_rate.high=0.5"]) == 2
    assert "Changed: hpo.search_space.learning_rate.high" in capsys.readouterr().err

    # A fresh study, its one trial pinned too. Its best/ is its argmax fold (which fold that
    # is depends on scores: test_the_best_fold_is_the_argmax_of_its_folds covers a later one).
    force_new = ["hpo.run.mode=force_new", "hpo.num_samples=1", _points(GOOD)]
    assert main(["hpo", "--config", path, *force_new]) == 0
    v2 = backbone_dir / "hpo_tiny-bert_v2"
    assert _states(v2) == ["COMPLETE"]  # a fresh study
    assert sorted(p.name for p in backbone_dir.iterdir()) == ["hpo_tiny-bert", "hpo_tiny-bert_v2"]
    assert _assert_best_model_is_the_best_fold(load_config(Path(path), force_new), v2).number == 0


class _Saves:
    """A model or tokenizer whose ``save_pretrained`` writes which fold it belongs to."""

    def __init__(self, fold: int, name: str) -> None:
        self.fold, self.name = fold, name

    def save_pretrained(self, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        (where / self.name).write_text(str(self.fold))


class _Fold:
    """What the fold loop's choice of the best fold reads of a finished fold (``FoldRun``)."""

    def __init__(self, fold: int) -> None:
        self.fold, self.model = fold, _Saves(fold, "model")
        self.inputs = SimpleNamespace(tokenizer=_Saves(fold, "tokenizer"))


@pytest.mark.parametrize(
    ("direction", "scores", "chosen"),
    [
        ("maximize", [0.6, 0.8], 1),  # a later fold scored higher: not the first fold
        ("maximize", [0.8, 0.6], 0),
        ("maximize", [0.5, 0.9, 0.7], 1),  # neither the first nor the last
        ("maximize", [0.7, 0.7], 0),  # the first of equals
        ("minimize", [0.8, 0.6], 1),
        ("minimize", [0.6, 0.8], 0),
    ],
)
def test_the_best_fold_is_the_argmax_of_its_folds(
    tmp_path: Path, direction: str, scores: list[float], chosen: int
) -> None:
    # The fold loop's choice of a trial's best fold and of the model best/ keeps (rank 0
    # saves it when a fold beats the best so far), on fold scores given here: which fold a
    # real search's folds favour depends on the CPU's arithmetic (the searches above check
    # that best/ is their argmax fold, whichever it is).
    job = SimpleNamespace(study=SimpleNamespace(direction=Direction(direction)))
    best_model, state = tmp_path / "best", FoldState()
    for fold, score in enumerate(scores):
        session = SimpleNamespace(rank=0)
        state = _with_fold(
            cast(Any, job),
            cast(Any, session),
            state,
            cast(Any, _Fold(fold)),
            fold_result(fold, score),
            best_model,
        )
    assert state.best_fold == chosen
    assert [f.objective for f in state.folds] == scores
    assert (best_model / "model").read_text() == (best_model / "tokenizer").read_text()
    assert (best_model / "model").read_text() == str(chosen)  # that fold's model, no other


def test_a_fold_logged_before_its_process_was_lost_is_not_logged_again(tmp_path: Path) -> None:
    # A trial process lost after logging a fold and before Tune registered the fold's
    # checkpoint trains the fold's last epoch again on its retry and tracks the fold again.
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.experiment_id(uri, "t", (tmp_path / "artifacts").as_uri())
    tags = tracking.run_tags("variant", variant="hpo_x")
    parent = tracking.open_run(uri, exp, "hpo_x", tags, tags, "driver")
    origin = Origin(backbone="x", variant="hpo_x", study_key_hash="s", trial=0, trial_key_hash="k")
    trial_run = run_tree.open_trial_run(parent, origin)
    job = SimpleNamespace(
        trial_run=trial_run, origin=lambda: origin, study=SimpleNamespace(metric="macro_f1")
    )
    client = MlflowClient(uri)

    def objectives(fold: int) -> list[float]:
        fold_run = run_tree.open_fold_run(trial_run, origin, fold)
        return [m.value for m in client.get_metric_history(fold_run.run_id, "objective")]

    track = cast(Any, _track_fold)
    track(job, fold_result(0, 0.8))
    track(job, fold_result(0, 0.8))  # the retry scored the same: logged once
    # Lost between the fold's run and the trial's fold_objective: only the latter is missing.
    fold_1 = run_tree.open_fold_run(trial_run, origin, 1)
    tracking.log(fold_1, metrics=fold_run_metrics(fold_result(1, 0.6)))
    track(job, fold_result(1, 0.6))
    track(job, fold_result(2, 0.5))
    track(job, fold_result(2, 0.55))  # the retry scored differently: the latest counts
    assert [objectives(f) for f in range(3)] == [[0.8], [0.6], [0.5, 0.55]]
    history = client.get_metric_history(trial_run.run_id, "fold_objective")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.8), (1, 0.6), (2, 0.5), (2, 0.55)]
    assert tracking.logged(trial_run, "fold_objective") == {0: 0.8, 1: 0.6, 2: 0.55}


@pytest.mark.slow
def test_infeasible_request_exits_2_and_writes_nothing(
    ray_cluster: None, smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hpo", "--config", str(smoke_experiment()), "resources.workers_per_trial=3"]) == 2
    err = capsys.readouterr().err
    assert "one trial needs 3 worker(s)" in err and "2 CPUs" in err
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
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
