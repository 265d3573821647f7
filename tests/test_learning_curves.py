"""Learning curves and error analysis as pure logic: a fold's epoch points, the refit's
progress line, per-class scores and the confusion matrix."""

from __future__ import annotations

import math

import pytest

from ray_pipeline.final.results import EpochRecord
from ray_pipeline.final.worker import progress_line
from ray_pipeline.hpo.results import EpochPoint
from ray_pipeline.hpo.worker import _with_last_validation, epoch_point
from ray_pipeline.metrics import class_scores, compute_metrics, confusion


def test_epoch_point_is_one_based_with_time_per_step_and_no_nan_score() -> None:
    point = epoch_point(0, 0.7, 12.0, 4, 2e-5, 0.81)
    assert point == EpochPoint(
        epoch=1, train_loss=0.7, validation=0.81, learning_rate=2e-5, step_seconds=3.0
    )
    assert epoch_point(2, 0.5, 12.0, 4, 1e-5, None).validation is None  # not evaluated
    assert epoch_point(2, 0.5, 12.0, 4, 1e-5, math.nan).validation is None  # rank > 0
    assert epoch_point(2, 0.5, 0.0, 0, 1e-5, None).step_seconds is None  # no step taken


def test_the_last_epoch_gets_the_folds_objective() -> None:
    history = [epoch_point(e, 1.0 - e / 10, 1.0, 1, 1e-5, None) for e in range(3)]
    done = _with_last_validation(history, 3, 0.9)
    assert [p.validation for p in done] == [None, None, 0.9]
    assert done[:2] == history[:2] and done[2].train_loss == history[2].train_loss
    # A fold evaluated on no rows (NaN objective) or a history that does not reach the last
    # epoch keep what they have.
    assert _with_last_validation(history, 3, math.nan) == history
    assert _with_last_validation(history[:2], 3, 0.9) == history[:2]
    assert _with_last_validation([], 3, 0.9) == []


def _record(epoch: int, seconds: float, attempt: str = "a1", workers: int = 1) -> EpochRecord:
    return EpochRecord(
        epoch=epoch,
        train_loss=0.40786,
        seconds=seconds,
        attempt=attempt,
        workers=workers,
        precision="fp32",
    )


def test_progress_line_times_this_attempts_epochs_and_estimates_the_rest() -> None:
    records = [_record(0, 1000.0, attempt="a0"), _record(1, 48.0), _record(2, 50.0)]
    assert progress_line("final_minilm", records[:2], 5) == (
        "final final_minilm: epoch 2/5 train_loss 0.4079 (fp32), 48 s/epoch, ETA 2 min"
    )
    # The earlier attempt's epoch (another machine) does not count; 49 s x 2 epochs left.
    assert progress_line("final_minilm", records, 5) == (
        "final final_minilm: epoch 3/5 train_loss 0.4079 (fp32), 49 s/epoch, ETA 2 min"
    )
    # Nor do epochs of the same attempt on another number of workers; no ETA after the last.
    later = [*records, _record(3, 3000.0, workers=2), _record(4, 4000.0, workers=2)]
    assert progress_line("final_minilm", later, 5) == (
        "final final_minilm: epoch 5/5 train_loss 0.4079 (fp32), 58 min/epoch"
    )


def test_class_scores_and_confusion_of_a_classifier() -> None:
    labels = ["great", "other", "bad"]  # not sorted: the order is the model's labels'
    gold = ["great", "great", "great", "other", "other", "bad"]
    pred = ["great", "great", "other", "other", "great", "other"]
    scores = class_scores("sequence_classification", gold, pred, labels)
    assert list(scores) == labels  # every label, "bad" never predicted
    great, other, bad = scores.values()
    assert (great.precision, great.recall, great.support) == (2 / 3, 2 / 3, 3)
    assert great.f1 == pytest.approx(2 / 3)
    assert (other.precision, other.recall, other.support) == (1 / 3, 1 / 2, 2)
    assert other.f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert (bad.precision, bad.recall, bad.f1, bad.support) == (0.0, 0.0, 0.0, 1)
    # Their mean is the macro F1 the metrics report.
    macro = compute_metrics("sequence_classification", gold, pred)["macro_f1"]
    assert sum(s.f1 for s in scores.values()) / 3 == pytest.approx(macro)

    matrix = confusion(gold, pred, labels)
    assert matrix.labels == labels
    assert matrix.counts == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]  # rows: true, columns: predicted
    assert sum(map(sum, matrix.counts)) == len(gold)


def test_class_scores_of_ner_are_per_entity_type() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "B-MISC"]]
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    scores = class_scores("token_classification", gold, pred, labels)
    assert list(scores) == ["LOC", "MISC", "PER"]  # entity types only: no averages
    loc, misc, per = scores.values()
    assert (loc.precision, loc.recall, loc.support) == (1.0, 0.5, 2)
    assert loc.f1 == pytest.approx(2 / 3)
    assert (misc.precision, misc.recall, misc.f1, misc.support) == (0.0, 0.0, 0.0, 0)
    assert (per.precision, per.recall, per.f1, per.support) == (1.0, 1.0, 1.0, 1)
