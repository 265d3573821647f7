"""A worker node lost mid-search: a real two-node Ray cluster on this machine (`ray start
--head` + `ray start --address`, each with its own temp dir), the smoke search driven from a
separate process, and the worker node stopped by killing the `ray start` this test launched
while one of its trials is between folds. Every trial must complete, the lost one resumed from
its checkpoint, and nothing may be left RUNNING in MLflow.

Also lost: the node of a finished trial whose process Tune keeps for the next trial (issue 35,
point 7; tests/test_tune_race.py). The driver, run as ``python -m tests.test_node_loss``, kills
the node from a Tune callback; the next trial takes the lost process, and that is one failure
with retries left, not an errored trial. `benchmarks/node_loss_loop.py` repeats that test."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray.tune import Callback

from ray_pipeline import faults
from ray_pipeline.artifacts import read_json
from ray_pipeline.hpo.results import FoldState, HpoResult
from ray_pipeline.hpo.trial_report import TrialReport
from tests.checkpoints import checkpoint_state
from tests.conftest import REPO, SMOKE
from tests.processes import (
    CLI,
    Cluster,
    alive_nodes,
    kill_started,
    ray_node_env,
    short_temp_dir,
    start_logged,
    two_node_cluster,
)
from tests.run_outputs import embedded_store, mlflow_runs
from tests.waits import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    env = {
        **ray_node_env(secrets.token_hex(16)),
        # The head declares a lost node dead after ~2 s instead of ~15 s.
        "RAY_health_check_period_ms": "500",
        "RAY_health_check_failure_threshold": "4",
    }
    with (
        short_temp_dir("head-") as head_dir,
        short_temp_dir("node-") as node_dir,
        two_node_cluster(head_dir, node_dir, env) as started,
    ):
        yield started


def _trial_between_folds_on(node: str, tune_dir: Path) -> FoldState | None:
    """The state of a trial early in its second fold whose first fold trained on ``node``,
    as of a checkpoint Tune has registered. A trial's only checkpoint on disk is registered
    when it is not the trial's first: Tune deletes the one before (``num_to_keep=1``) only once
    it registered the newer (``tests.checkpoints.last_checkpoints``). The smoke search takes a
    checkpoint after every epoch, so that is at the end of fold 0 or a few epochs into fold 1;
    with most of fold 1 left, a kill now makes the trial resume in fold 1, never in fold 0 and
    never too late (a trial that reported its last epoch is done and is not retried)."""
    for trial in tune_dir.glob("round_1/trial_*"):
        checkpoints = list(trial.glob("checkpoint_*"))
        if len(checkpoints) != 1 or checkpoints[0].name == "checkpoint_000000":
            continue
        state = checkpoint_state(checkpoints[0], FoldState)
        if state is None or len(state.folds) != 1 or state.folds[0].node != node:
            continue
        if state.current is None or state.current.epochs_done <= 3:
            return state
    return None


def test_worker_node_lost_mid_hpo_every_trial_completes(cluster: Cluster, tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    variant = outputs / "smoke" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    head_node, worker_node = alive_nodes(cluster.address, cluster.env)
    argv = [*CLI, "hpo", "--config", str(SMOKE)]
    argv += [f"outputs_root={outputs}", "hpo.num_samples=4", "hpo.training.epochs=15"]
    log = tmp_path / "hpo.log"
    env = {**cluster.env, "RAY_ADDRESS": cluster.address}
    driver = start_logged(argv, log, env, cwd=REPO)
    try:
        wait_for(
            lambda: _trial_between_folds_on(worker_node, variant / "tune"),
            "a trial between folds on the worker node",
            timeout=240,
            still_running=lambda: driver.poll() is None,
        )
        # The node goes, as a spot node would: its `ray start` and every process it started
        # (the trial's among them: in a session of the raylet's, out of reach of os.killpg,
        # it would go on training until it noticed its raylet gone, and could finish).
        kill_started([cluster.worker])
        assert driver.wait(timeout=400) == 0, log.read_text()[-4000:]
    finally:
        with contextlib.suppress(OSError):
            os.killpg(driver.pid, signal.SIGKILL)

    hpo = read_json(variant / "hpo.json", HpoResult)
    assert [t.state for t in hpo.trials] == ["COMPLETE"] * 4  # none lost
    assert all([f.fold for f in t.folds] == [0, 1] for t in hpo.trials)
    retried = [t for t in hpo.trials if t.resumes]
    assert retried and all(t.failures for t in retried), [
        (t.resumes, t.failures) for t in hpo.trials
    ]
    # The retried trial resumed after its first fold: that fold, trained on the lost node, stays.
    assert any(t.folds[0].node == worker_node and t.folds[1].node == head_node for t in retried)
    runs = mlflow_runs(embedded_store(outputs, "smoke"), "smoke")
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    trials = [r for r in runs if r.data.tags.get("ray_pipeline.kind") == "trial"]
    assert sorted(r.info.status for r in trials) == ["FINISHED"] * 4
    text = log.read_text()
    assert "failed" in text and "retry 1 of 3" in text


KEEP_ENV = "RAY_PIPELINE_TEST_KILL_KEPT"
"""The settings of ``KillNodeOfFinishedTrial`` for the driver this module runs, as JSON."""
MISSED = "missed"
SAMPLES = 8
"""The test's trials."""
"""The marker's content where no trial was left to take the lost process."""


class KillNodeOfFinishedTrial(Callback):
    """In the driver: when the first trial that trained on the worker ``node`` completes, with
    more trials to come, kills that node (the process group ``pgid`` of its `ray start`) and
    waits until Ray reports it dead. Tune, which has not seen the trial's process die, keeps it
    for the next trial. Writes ``marker``: how many trials there were then (the next one takes
    the process), or ``MISSED``."""

    def __init__(self, pgid: int, node: str, num_samples: int, marker: str) -> None:
        self.pgid, self.node, self.num_samples = pgid, node, num_samples
        self.marker = Path(marker)

    def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
        report = TrialReport.from_metrics(trial.last_result)
        if self.marker.exists() or report is None or report.fold_state.folds[-1].node != self.node:
            return
        if len(trials) >= self.num_samples:
            self.marker.write_text(json.dumps(MISSED))
            return
        os.killpg(self.pgid, signal.SIGKILL)
        wait_for(lambda: self.node not in _alive(), "Ray to report the worker node dead", 60)
        self.marker.write_text(json.dumps(len(trials)))


def _alive() -> set[str]:
    """The alive nodes, as this driver sees them."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}  # type: ignore[no-untyped-call]


def _drive(argv: list[str]) -> int:
    """The pipeline's command line, with ``KillNodeOfFinishedTrial`` (settings in ``KEEP_ENV``)
    among the round's Tune callbacks."""
    from ray_pipeline.cli import main
    from ray_pipeline.hpo import tuning

    kill = KillNodeOfFinishedTrial(**json.loads(os.environ[KEEP_ENV]))
    callbacks = tuning._callbacks
    tuning._callbacks = lambda tune_round: [*callbacks(tune_round), kill]
    return main(argv)


def test_worker_node_lost_while_tune_keeps_its_trial_process(
    cluster: Cluster, tmp_path: Path
) -> None:
    outputs = tmp_path / "outputs"
    variant = outputs / "smoke" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    _, worker_node = alive_nodes(cluster.address, cluster.env)
    marker = tmp_path / "killed.json"
    kill = {"pgid": cluster.worker.pid, "node": worker_node, "num_samples": SAMPLES}
    kill["marker"] = str(marker)
    # Two slots, one per node: the next trial is suggested when one completes, and takes its
    # process. The worker's first trial can end well after the head's first (in one run of 4
    # trials of 2 epochs, the head had finished the three others by then; in one of 6 trials of
    # 6 epochs, two): with 8, the head must finish six (five of ~3 s each) to miss it.
    argv = [sys.executable, "-m", "tests.test_node_loss", "hpo", "--config", str(SMOKE)]
    argv += [f"outputs_root={outputs}", f"hpo.num_samples={SAMPLES}", "hpo.training.epochs=6"]
    log = tmp_path / "hpo.log"
    env = {**cluster.env, "RAY_ADDRESS": cluster.address, KEEP_ENV: json.dumps(kill)}
    driver = start_logged(argv, log, env, cwd=REPO)
    try:
        code = driver.wait(timeout=400)
    finally:
        with contextlib.suppress(OSError):
            os.killpg(driver.pid, signal.SIGKILL)
    text = log.read_text()
    assert marker.is_file(), text[-4000:]  # a trial completed on the worker node
    taken = json.loads(marker.read_text())
    assert taken != MISSED, "no trial was left to take the lost process: nothing was tested"
    assert code == 0, text[-4000:]

    trials = read_json(variant / "hpo.json", HpoResult).trials
    assert [(t.number, t.state) for t in trials] == [(n, "COMPLETE") for n in range(SAMPLES)]
    # The trial that took the lost process: one failure (a fresh study numbers trials 0, 1...).
    assert [len(t.failures) for t in trials] == [int(t.number == taken) for t in trials]
    assert [f.trial for f in faults.read_failures(variant / "failures.jsonl")] == [taken]
    assert "retry 1 of 3" in text and "no retries left" not in text, text[-4000:]
    runs = mlflow_runs(embedded_store(outputs, "smoke"), "smoke")
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    trial_runs = [r for r in runs if r.data.tags.get("ray_pipeline.kind") == "trial"]
    assert sorted(r.info.status for r in trial_runs) == ["FINISHED"] * SAMPLES


if __name__ == "__main__":  # the driver of the test above
    sys.exit(_drive(sys.argv[1:]))
