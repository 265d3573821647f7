"""Scoring trials on the validation split a user gives (``hpo.evaluation: holdout``, the
default when there is one), and the refit on every labelled row but the test set
(``final_training.data: train_and_validation``): the split each fit trains and is scored on,
and end to end on a real local Ray cluster, where a validation file whose labels are the
training data's turned around turns the ranking around."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.final.results import FinalMetrics, Lineage
from ray_pipeline.hpo.cache import prepared
from ray_pipeline.hpo.fold_run import fit_and_validation
from ray_pipeline.hpo.jobs import TrialJob
from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.hpo.stage import _job
from ray_pipeline.identity import stable_hash, study_key
from ray_pipeline.loading import load_config
from ray_pipeline.schema import PipelineConfig
from tests.conftest import CONFIG_DIR, MakeExp

TEST_CSV = CONFIG_DIR / "data" / "tiny_reviews" / "test.csv"
TRAIN_ROWS, VALIDATION_ROWS = 160, 46
TWO_TRIALS = [
    "hpo.num_samples=2",
    "hpo.sampler=random",
    "hpo.training.epochs=3",
    "tracking.enabled=false",
    "resources.max_concurrent_trials=1",
    # A learning rate that learns the tiny reviews, then one that wrecks the tiny model: on
    # the true labels the first must win by far, on turned-around labels the second.
    "hpo.enqueue=[{learning_rate: 0.002, weight_decay: 0.0}, "
    "{learning_rate: 0.08, weight_decay: 0.0}]",
]


def _validation_file(tmp_path: Path, flipped: bool) -> Path:
    """The tiny test reviews as a validation file, with each label turned around if asked."""
    with TEST_CSV.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    turn = {"great": "other", "other": "great"}
    path = tmp_path / ("flipped.csv" if flipped else "validation.csv")
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["review", "score"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "score": turn[row["score"]] if flipped else row["score"]})
    return path


def _job_of(config: PipelineConfig) -> TrialJob:
    backbone = config.model.backbones[0]
    study = _job(config, backbone, "hpo_tiny-bert", "h", None)
    return TrialJob(study=study, trial=0, params={}, trial_key_hash="t")


def test_holdout_is_the_default_with_a_validation_split_and_fits_each_trial_once(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    validation = _validation_file(tmp_path, flipped=False)
    config = load_config(smoke_experiment(), [f"data.validation_file={validation}"])
    assert config.hpo.evaluation == "holdout" and config.hpo.folds == 1
    assert config.final_training.data == "train_and_validation"
    job = _job_of(config)
    inputs = prepared(job.study.data, job.study.backbone, 64)
    fit, scored = fit_and_validation(job, inputs, 0)
    assert fit == list(range(TRAIN_ROWS))  # every training row, once
    assert inputs.validation_rows is not None and scored == inputs.validation_rows
    assert len(scored) == VALIDATION_ROWS
    # Without a validation split the defaults stay what they were: k-fold CV, refit on train.
    plain = load_config(smoke_experiment())
    assert plain.hpo.evaluation == "cv" and plain.final_training.data == "train"


def test_holdout_without_a_validation_split_holds_out_the_same_stratified_rows(
    smoke_experiment: MakeExp,
) -> None:
    config = load_config(smoke_experiment(), ["hpo.evaluation=holdout"])
    job = _job_of(config)
    inputs = prepared(job.study.data, job.study.backbone, 64)
    fit, scored = fit_and_validation(job, inputs, 0)
    assert len(scored) == round(0.2 * TRAIN_ROWS) and len(fit) == TRAIN_ROWS - len(scored)
    assert fit_and_validation(job, inputs, 0)[0] == fit  # the same rows for every trial
    strata = inputs.splits.train.strata
    assert strata is not None
    labels = [strata[i] for i in range(TRAIN_ROWS) if i not in set(fit)]
    assert abs(labels.count("great") / len(labels) - 0.5) < 0.1  # stratified (balanced data)
    # Cross-validated study keys do not change; a holdout study is another study.
    backbone = config.model.backbones[0]
    cv = load_config(smoke_experiment(), ["hpo.evaluation=cv"])
    before = load_config(smoke_experiment())
    assert stable_hash(study_key(cv, backbone)) == stable_hash(study_key(before, backbone))
    assert stable_hash(study_key(config, backbone)) != stable_hash(study_key(cv, backbone))


def test_train_and_validation_without_a_validation_split_is_refused(
    smoke_experiment: MakeExp, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(smoke_experiment())
    assert main(["validate", "--config", path, "final_training.data=train_and_validation"]) == 2
    assert "final_training.data: train_and_validation needs a validation split" in (
        capsys.readouterr().err
    )


def _search(path: Path, validation: Path, name: str) -> HpoResult:
    args = ["hpo", "--config", str(path), f"data.validation_file={validation}", *TWO_TRIALS]
    assert main([*args, f"experiment.name={name}"]) == 0
    variant = path.parent / "outputs" / name / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    return read_json(variant / "hpo.json", HpoResult)


@pytest.mark.slow
def test_trials_are_ranked_on_the_validation_split_and_the_refit_trains_on_both(
    ray_cluster: None, smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    path = smoke_experiment()
    result = _search(path, _validation_file(tmp_path, flipped=False), "truth")
    assert result.evaluation == "holdout" and result.k_folds == 1
    for trial in result.trials:
        (fold,) = trial.folds
        assert (fold.train_examples, fold.validation_examples) == (TRAIN_ROWS, VALIDATION_ROWS)
    good, wrecked = (t.objective_mean or 0.0 for t in result.trials)
    assert good > wrecked + 0.2, (good, wrecked)
    assert result.best is not None and result.best.number == 0
    # The same two trials scored on labels turned around: the ranking turns around.
    flipped = _search(path, _validation_file(tmp_path, flipped=True), "flipped")
    assert flipped.best is not None and flipped.best.number == 1, flipped.trials
    # The refit trains on the training and the validation rows, and says so.
    validation = _validation_file(tmp_path, flipped=False)
    train = ["train", "--config", str(path), f"data.validation_file={validation}"]
    train += ["experiment.name=truth", "tracking.enabled=false", "final_training.epochs=1"]
    assert main([*train, "final_training.source.variant=hpo_tiny-bert"]) == 0
    final = path.parent / "outputs" / "truth" / "final" / "tiny-bert" / "final_tiny-bert"
    lineage = read_json(final / "lineage.json", Lineage)
    assert lineage.data == "train_and_validation"
    assert lineage.rows == {"train": TRAIN_ROWS, "validation": VALIDATION_ROWS, "test": 46}
    metrics = read_json(final / "metrics.json", FinalMetrics)
    assert metrics.train_examples == TRAIN_ROWS + VALIDATION_ROWS
