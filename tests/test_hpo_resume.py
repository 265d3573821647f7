"""A driver killed with SIGKILL mid-search, then resumed with resume_if_incomplete."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.hpo.results import HpoResult
from tests.conftest import MakeExp
from tests.processes import cli_process
from tests.run_outputs import embedded_store, mlflow_runs, study_states

pytestmark = pytest.mark.slow


def _hpo(path: Path, *overrides: str, log: Path) -> subprocess.Popen[bytes]:
    return cli_process("hpo", "--config", str(path), *overrides, log=log)


def test_sigkilled_driver_resumes_without_duplicates(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    path = smoke_experiment()
    variant = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    db = variant / "study.db"
    one_at_a_time = "resources.max_concurrent_trials=1"

    first = _hpo(path, one_at_a_time, log=tmp_path / "first.log")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and ("COMPLETE" not in dict(study_states(db)).values()):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and everything it started
    first.wait()
    assert len([s for _, s in study_states(db) if s == "COMPLETE"]) < 3

    log = tmp_path / "second.log"
    second = _hpo(path, one_at_a_time, "hpo.run.mode=resume_if_incomplete", log=log)
    assert second.wait(timeout=400) == 0, log.read_text()[-3000:]
    output = log.read_text()
    assert f"resuming {variant.name} (round_1)" in output
    # A trial that had finished is either not started again or, if Tune had not yet saved
    # its end when the driver died, finds every fold in its checkpoint and trains nothing.
    assert "Trial trial_0 started" not in output or "resuming after 2 of 2 finished" in output
    states = study_states(db)
    assert len([n for n, s in states if s == "COMPLETE"]) == 3  # num_samples, no duplicates
    assert not [n for n, s in states if s == "RUNNING"]
    # Only a trial the dead driver had asked Optuna for but never started may end FAIL.
    assert len([n for n, s in states if s == "FAIL"]) <= 1
    result = read_json(variant / "hpo.json", HpoResult)
    complete = [t for t in result.trials if t.state == "COMPLETE"]
    assert len(complete) == 3 and all(len(t.folds) == 2 for t in complete)
    runs = mlflow_runs(embedded_store(tmp_path / "outputs", "t"), "t")
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    parents = [r for r in runs if r.data.tags.get("ray_pipeline.kind") == "variant"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # continued, not duplicated
    finished_trials = {
        r.data.tags["ray_pipeline.trial"]
        for r in runs
        if r.data.tags.get("ray_pipeline.kind") == "trial" and r.info.status == "FINISHED"
    }
    assert len(finished_trials) == 3


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

    deadline = time.monotonic() + 180
    while ("trial", "RUNNING") not in runs():  # a trial is under way
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(1)
    proc.send_signal(signal.SIGTERM)  # what `ray job stop` sends
    assert proc.wait(timeout=120) == 130
    final = runs()
    assert ("variant", "KILLED") in final and ("trial", "KILLED") in final
    assert not [kind for kind, status in final if status == "RUNNING"]
    variant = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert" / "variant.json"
    assert '"status": "failed"' in variant.read_text()  # resume_if_incomplete continues it
