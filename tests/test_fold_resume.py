"""A retried trial resumes inside the fold it was in and trains each epoch once (issue 36):
the fold loop (``hpo/worker.run_folds``) run in this process, in a session that keeps the last
checkpoint reported and is "killed" after a given report, then run again from that checkpoint
as Ray Tune would restore it (a Ray cluster only because a fold records its node). Resumes
after real kills on a real cluster: tests/test_faults.py and tests/test_hpo_resume.py."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ray_pipeline.hpo.jobs import TrialJob
from ray_pipeline.hpo.stage import _job
from ray_pipeline.hpo.trial_report import TrialReport
from ray_pipeline.hpo.worker import run_folds
from ray_pipeline.loading import load_config
from tests.conftest import MakeExp
from tests.test_training_settings import _OneProcess


class _Killed(Exception):
    """The trial's process died here."""


class _Saved:
    """A checkpoint as ``Session.checkpoint`` gives it back (``ray.train.Checkpoint``'s
    ``as_directory``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def as_directory(self) -> Iterator[str]:
        yield str(self.path)


class _Recording(_OneProcess):
    """Records (fold, epoch) of every report, keeps the last checkpoint in ``keep``, and dies
    after ``die_after`` reports; restores from ``restored``."""

    def __init__(self, keep: Path, die_after: int | None = None, restored: Path | None = None):
        self.keep, self.die_after, self.restored = keep, die_after, restored
        self.reported: list[tuple[int, int]] = []

    def checkpoint(self) -> Any | None:
        return None if self.restored is None else _Saved(self.restored)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        report = TrialReport.from_metrics(metrics)
        assert report is not None
        self.reported.append((report.fold, report.epoch))
        if checkpoint_dir is not None:
            shutil.rmtree(self.keep, ignore_errors=True)
            shutil.copytree(checkpoint_dir, self.keep)
        if self.die_after is not None and len(self.reported) >= self.die_after:
            raise _Killed


def _trial(smoke_experiment: MakeExp) -> TrialJob:
    overrides = ["data.max_train_examples=24", "hpo.k_folds=2", "hpo.training.epochs=3"]
    overrides += ["hpo.training.max_length=16", "hpo.training.batch_size=4"]
    config = load_config(smoke_experiment(), overrides)
    study = _job(config, config.model.backbones[0], "hpo_tiny-bert", "h", None)
    return TrialJob(study=study, trial=0, params={}, trial_key_hash="t")


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")  # a fold records its Ray node
def test_a_retried_trial_trains_each_epoch_once(smoke_experiment: MakeExp, tmp_path: Path) -> None:
    job = _trial(smoke_experiment)
    assert job.epoch_checkpoints  # 3 epochs a fold: a checkpoint after every epoch
    keep = tmp_path / "checkpoint"
    first = _Recording(keep, die_after=2)
    with pytest.raises(_Killed):
        run_folds(job, first)
    assert first.reported == [(0, 0), (0, 1)]  # killed after fold 0's second epoch

    again = _Recording(keep, restored=keep)
    state = run_folds(job, again)
    # Fold 0 goes on at its third epoch; nothing before the checkpoint is trained again.
    assert again.reported == [(0, 2), (1, 0), (1, 1), (1, 2)]
    assert [f.fold for f in state.folds] == [0, 1]
    assert [p.epoch for p in state.folds[0].history] == [1, 2, 3]
    assert [p.epoch for p in state.folds[1].history] == [1, 2, 3]
    assert state.resumes == ["fold 0 epoch 2"]
