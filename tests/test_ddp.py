"""DDP in every stage that trains: two workers per trial and for final training on a row
count that does not divide evenly (33 rows, batch 16: unpadded shards would give the ranks 2
and 1 steps, and the rank with fewer would leave the other waiting in an all-reduce for good).
The trial also evaluates after every epoch on rank 0 alone while rank 1 waits at the
report."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.final.results import FinalMetrics
from ray_pipeline.hpo.results import HpoResult
from tests.conftest import SMOKE
from tests.run_outputs import assert_model_classifies
from tests.waits import InThread

pytestmark = pytest.mark.slow


def test_two_workers_on_uneven_rows_complete_every_training_stage(
    ray_cluster: None, tmp_path: Path
) -> None:
    outputs = tmp_path / "outputs"
    args = ["run", "--config", str(SMOKE), f"outputs_root={outputs}"]
    args += ["resources.workers_per_trial=2", "data.max_train_examples=33"]
    # hpo.report_every_epoch: rank 0 evaluates after every epoch while rank 1 waits at the
    # report. (With hpo.scheduler.type=asha, the 2 CPUs of this DDP trial's workers stayed
    # reserved after it finished, in 2 of 3 runs here, and the next stage waited for them.)
    args += ["hpo.training.batch_size=16", "hpo.num_samples=1", "hpo.report_every_epoch=true"]
    args += ["final_training.resources.workers=2"]  # by default one worker with 2 threads
    run = InThread(main, args)
    assert run.result(timeout=600) == 0  # a DDP hang fails here instead of blocking the suite

    root = outputs / "smoke"
    hpo = read_json(root / "hpo" / "tiny-bert" / "hpo_tiny-bert" / "hpo.json", HpoResult)
    assert [t.state for t in hpo.trials] == ["COMPLETE"]
    assert hpo.trials[0].epochs_trained == 4  # 2 folds x 2 epochs, each reported
    assert {f.workers for t in hpo.trials for f in t.folds} == {2}
    # Each fold is validated on its whole held-out part (33 rows, 2 folds), not on a shard.
    assert sorted(f.validation_examples for f in hpo.trials[0].folds) == [16, 17]
    final = root / "final" / "tiny-bert" / "final_tiny-bert"
    metrics = read_json(final / "metrics.json", FinalMetrics)
    refit = metrics.refit
    assert refit is not None and (refit.workers, refit.backend) == (2, "train")
    assert (refit.batch_size_per_worker, refit.effective_batch_size) == (8, 16)
    assert {(e.workers, e.threads) for e in metrics.epochs} == {(2, 1)}
    assert metrics.train_examples == 33
    assert metrics.test_examples == 46  # the test metrics cover the whole test set
    assert_model_classifies(final / "model")
