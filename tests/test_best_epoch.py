"""Best-epoch fold scores (``hpo.fold_score: best``): a fold is scored at its best epoch, keeps
that epoch's model, and final training refits the trial's mean best epoch count. The rule on
its own (which epoch wins, ties, when the weights go back), and end to end on a real local
Ray cluster: every fold's score is its best epoch's, the kept model scores it again, and the
refit's epochs and their reason are in lineage.json."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.data.splits import fold_indices
from ray_pipeline.final.results import FinalMetrics, Lineage, refit_epochs
from ray_pipeline.hpo.cache import prepared
from ray_pipeline.hpo.fold_run import fold_scores, with_best_epoch
from ray_pipeline.hpo.jobs import TrialJob
from ray_pipeline.hpo.results import FoldProgress, HpoResult, TrialRecord
from ray_pipeline.hpo.stage import _job
from ray_pipeline.identity import stable_hash, study_key
from ray_pipeline.loading import load_config
from ray_pipeline.schema import PipelineConfig, TrainingParams
from ray_pipeline.training import evaluate
from tests.builders import fold_result, trial_record
from tests.conftest import MakeExp

EPOCHS = 4


class _Weights:
    """Stands for a FoldRun's weights: which epoch's the model holds and which are kept."""

    def __init__(self) -> None:
        self.epoch, self.kept = 0, 0

    def keep_best_weights(self) -> None:
        self.kept = self.epoch

    def restore_best_weights(self) -> None:
        self.epoch = self.kept


def _job_of(config: PipelineConfig) -> TrialJob:
    study = _job(config, config.model.backbones[0], "hpo_tiny-bert", "h", None)
    return TrialJob(study=study, trial=0, params={}, trial_key_hash="t")


def _fold(job: TrialJob, scores: list[float]) -> tuple[int, dict[str, float], int]:
    """The fold loop's scoring over epochs that score ``scores`` (the last is evaluated by the
    caller): the scored epoch, its scores, and the epoch whose weights the model ends with."""
    weights, progress = _Weights(), FoldProgress(fold=0)
    for epoch, score in enumerate(scores[:-1]):
        weights.epoch = epoch + 1
        progress = with_best_epoch(job, weights, progress, epoch, {"macro_f1": score})  # type: ignore[arg-type]
    weights.epoch = len(scores)
    epoch, chosen = fold_scores(job, weights, progress, {"macro_f1": scores[-1]})  # type: ignore[arg-type]
    return epoch, chosen, weights.epoch


def test_a_fold_is_scored_at_its_best_epoch_with_that_epochs_weights(
    smoke_experiment: MakeExp,
) -> None:
    job = _job_of(load_config(smoke_experiment(), ["hpo.fold_score=best", "hpo.training.epochs=4"]))
    assert job.evaluates_every_epoch
    assert _fold(job, [0.5, 0.9, 0.7, 0.8]) == (2, {"macro_f1": 0.9}, 2)
    assert _fold(job, [0.5, 0.6, 0.7, 0.8]) == (4, {"macro_f1": 0.8}, 4)  # the last is best
    # A tie goes to the earlier epoch (fewer to refit), the last included.
    assert _fold(job, [0.5, 0.9, 0.9, 0.9]) == (2, {"macro_f1": 0.9}, 2)
    # Minimised metrics: lower is better.
    low = _job_of(
        load_config(
            smoke_experiment(),
            ["hpo.fold_score=best", "hpo.objective.direction=minimize"],
        )
    )
    assert _fold(low, [0.5, 0.2, 0.4, 0.3]) == (2, {"macro_f1": 0.2}, 2)
    # fold_score: last scores the last epoch, whatever came before.
    last = _job_of(load_config(smoke_experiment(), ["hpo.training.epochs=4"]))
    assert not last.evaluates_every_epoch
    assert _fold(last, [0.5, 0.9, 0.7, 0.8]) == (4, {"macro_f1": 0.8}, 4)


def test_the_refit_trains_the_mean_best_epoch_count_and_says_why(
    smoke_experiment: MakeExp,
) -> None:
    config = load_config(smoke_experiment(), ["hpo.training.epochs=4"])

    def trial(*epochs: int | None) -> TrialRecord:
        folds = [
            fold_result(f, 0.8).model_copy(update={"scored_epoch": e}) for f, e in enumerate(epochs)
        ]
        record = trial_record(0, 0.8)
        return record.model_copy(update={"folds": folds, "training": TrainingParams(epochs=4)})

    assert trial(2, 3, 2).scored_epochs == 2  # 7 / 3 rounded
    assert trial(2, 3, 3).scored_epochs == 3  # 8 / 3 rounded
    assert refit_epochs(config, trial(2, 3, 2)) == (
        2,
        "the trial's best epochs (2, 3, 2; mean rounded) of 4",
    )
    assert refit_epochs(config, trial(4, 4, 4)) == (4, "the trial's epochs")
    # Recorded before scored epochs existed: the trial's epochs.
    assert trial(None, None, None).scored_epochs is None
    assert refit_epochs(config, trial(None, None, None)) == (4, "the trial's epochs")
    fixed = load_config(smoke_experiment(), ["final_training.epochs=7"])
    assert refit_epochs(fixed, trial(2, 3, 2)) == (7, "final_training.epochs")


def test_best_epoch_scores_are_another_study(smoke_experiment: MakeExp) -> None:
    plain = load_config(smoke_experiment())
    backbone = plain.model.backbones[0]
    last = load_config(smoke_experiment(), ["hpo.fold_score=last"])
    best = load_config(smoke_experiment(), ["hpo.fold_score=best"])
    assert stable_hash(study_key(last, backbone)) == stable_hash(study_key(plain, backbone))
    assert stable_hash(study_key(best, backbone)) != stable_hash(study_key(plain, backbone))


@pytest.mark.slow
def test_folds_score_their_best_epoch_and_the_refit_trains_that_many(
    ray_cluster: None, smoke_experiment: MakeExp
) -> None:
    path = smoke_experiment()
    overrides = [
        "hpo.fold_score=best",
        f"hpo.training.epochs={EPOCHS}",
        "hpo.num_samples=1",
        "hpo.enqueue=[{learning_rate: 0.002, weight_decay: 0.0}]",
        "tracking.enabled=false",
    ]
    assert main(["run", "--config", str(path), *overrides]) == 0
    outputs = path.parent / "outputs" / "t"
    hpo_dir = outputs / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    hpo = read_json(hpo_dir / "hpo.json", HpoResult)
    (trial,) = hpo.trials
    for fold in trial.folds:
        scores = [p.validation for p in fold.history]
        assert len(scores) == EPOCHS and all(s is not None for s in scores), fold.history
        best = max(s for s in scores if s is not None)
        assert fold.objective == best == fold.metrics["macro_f1"]
        assert fold.scored_epoch == scores.index(best) + 1  # the earliest best epoch
    # The kept model is the best fold's best epoch: it scores that fold's objective again.
    assert trial.best_fold is not None and trial.checkpoint is not None
    kept = trial.folds[trial.best_fold]
    config = load_config(path, overrides)
    inputs = prepared(config.data, config.model.backbones[0], config.hpo.training.max_length)
    strata = inputs.splits.train.strata
    _, rows = fold_indices(len(inputs.rows), strata, 2, config.hpo.seed, kept.fold)
    from transformers import AutoModelForSequenceClassification

    kept_model = hpo_dir / trial.checkpoint  # recorded relative to the variant
    model = AutoModelForSequenceClassification.from_pretrained(kept_model)
    labels, task = inputs.splits.labels, config.data.task
    again = evaluate(model, [inputs.rows[i] for i in rows], labels, task, 32, inputs.pad_id)
    assert math.isclose(again["macro_f1"], kept.objective, abs_tol=1e-6), (again, kept)
    # The refit trains the mean best epoch count, and lineage.json says why.
    final = outputs / "final" / "tiny-bert" / "final_tiny-bert"
    lineage = read_json(final / "lineage.json", Lineage)
    want = trial.scored_epochs
    assert want is not None and lineage.training.epochs == want
    assert len(read_json(final / "metrics.json", FinalMetrics).epochs) == want
    if want != EPOCHS:
        assert lineage.epochs_from is not None and "best epochs" in lineage.epochs_from


def test_the_best_epochs_weights_survive_a_resume_inside_the_fold(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    import torch

    from ray_pipeline.hpo.fold_run import FoldRun
    from tests.test_training_settings import _OneProcess

    overrides = ["data.max_train_examples=24", "hpo.fold_score=best", "hpo.training.epochs=3"]
    overrides += ["hpo.training.max_length=16", "hpo.training.batch_size=4"]
    job = _job_of(load_config(smoke_experiment(), overrides))
    inputs = prepared(job.study.data, job.study.backbone, 16)
    fold = FoldRun(job, 0, inputs, _OneProcess())
    fold.train_epoch(0)
    fold.keep_best_weights()  # epoch 1 was the best so far
    fold.train_epoch(1)
    fold.save_training_state(tmp_path)  # the epoch checkpoint after epoch 2
    again = FoldRun(job, 0, inputs, _OneProcess())
    again.load_training_state(tmp_path)
    assert fold.best_weights is not None and again.best_weights is not None
    name = next(k for k in fold.best_weights if k.endswith("classifier.weight"))
    assert torch.equal(again.best_weights[name], fold.best_weights[name])
    now = again.model.state_dict()[name]
    assert not torch.equal(now, fold.best_weights[name])  # epoch 2 moved the weights on
    again.restore_best_weights()
    assert torch.equal(again.model.state_dict()[name], fold.best_weights[name])
