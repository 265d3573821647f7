"""A driver killed with SIGKILL mid-search and resumed by the default run.mode; SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.paths import trial_name
from tests.checkpoints import fold_histories, inside_fold, resumed_at
from tests.conftest import MakeExp
from tests.processes import cli_process
from tests.run_outputs import embedded_store, mlflow_runs, study_states
from tests.waits import wait_for

pytestmark = pytest.mark.slow


def _hpo(path: Path, *overrides: str, log: Path) -> subprocess.Popen[bytes]:
    return cli_process("hpo", "--config", str(path), *overrides, log=log)


def test_sigkilled_driver_is_resumed_by_reuse_if_exists_inside_the_fold_it_was_in(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    path = smoke_experiment()
    outputs = tmp_path / "outputs"
    variant = outputs / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    db = variant / "study.db"
    # One trial at a time, folds of 10 epochs with a checkpoint after each: the kill lands
    # after trial 0 finished, inside trial 1's second fold.
    args = ["resources.max_concurrent_trials=1", "hpo.num_samples=2", "hpo.training.epochs=10"]

    first = _hpo(path, *args, log=tmp_path / "first.log")

    def running() -> bool:
        return first.poll() is None

    wait_for(lambda: "COMPLETE" in dict(study_states(db)).values(), "trial 0", 240, running)
    tune = variant / "tune" / "round_1"
    seen = wait_for(
        lambda: inside_fold(tune, None, 1, trial_name(1)),
        "a checkpoint inside trial 1's fold 1",
        240,
        running,
    )
    os.killpg(first.pid, signal.SIGKILL)  # the driver and everything it started
    first.wait()
    assert dict(study_states(db)) == {0: "COMPLETE", 1: "RUNNING"}
    assert seen.current is not None and [f.fold for f in seen.folds] == [0]

    log = tmp_path / "second.log"  # the default run.mode, reuse_if_exists, resumes it
    second = _hpo(path, *args, log=log)
    assert second.wait(timeout=400) == 0, log.read_text()[-3000:]
    output = log.read_text()
    assert f"resuming {variant.name} (round_1)" in output
    assert "trial 1: resuming after 1 of 2 finished fold(s), inside fold 1 after" in output
    states = study_states(db)
    assert states == [(0, "COMPLETE"), (1, "COMPLETE")]  # the same two trials, no duplicates
    result = read_json(variant / "hpo.json", HpoResult)
    (resume,) = result.trials[1].resumes  # trial 1 went on inside fold 1, from that epoch on
    assert resumed_at(resume) >= (1, seen.current.epochs_done)
    assert result.trials[1].folds[0] == seen.folds[0]  # its first fold was not trained again
    # Every fold was trained and logged once: a retrained fold would log its objective again.
    histories = fold_histories(outputs)
    assert {n: h for n, h in histories.items() if "_fold" in n} == {
        f"hpo_tiny-bert_trial_{t}_fold{k}": [1] for t in range(2) for k in range(2)
    }
    assert histories["hpo_tiny-bert_trial_1"] == [0, 1]
    runs = mlflow_runs(embedded_store(outputs, "t"), "t")
    parents = [r for r in runs if r.data.tags.get("ray_pipeline.kind") == "variant"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # continued, not duplicated


def test_sigterm_ends_open_runs_killed(smoke_experiment: MakeExp, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    path = smoke_experiment()
    store = tmp_path / "outputs" / "t" / "mlflow.db"
    proc = _hpo(path, "resources.max_concurrent_trials=1", log=tmp_path / "run.log")

    def runs() -> list[tuple[str, str]]:
        client = MlflowClient(f"sqlite:///{store}")
        experiment = client.get_experiment_by_name("t") if store.is_file() else None
        if experiment is None:
            return []
        found = client.search_runs([experiment.experiment_id])
        return [(r.data.tags.get("ray_pipeline.kind", ""), r.info.status) for r in found]

    wait_for(
        lambda: ("trial", "RUNNING") in runs(),
        "a trial under way",
        180,
        lambda: proc.poll() is None,
    )
    proc.send_signal(signal.SIGTERM)  # what `ray job stop` sends
    assert proc.wait(timeout=120) == 130
    final = runs()
    assert ("variant", "KILLED") in final and ("trial", "KILLED") in final
    assert not [kind for kind, status in final if status == "RUNNING"]
    variant = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert" / "variant.json"
    assert '"status": "failed"' in variant.read_text()  # resume_if_incomplete continues it
