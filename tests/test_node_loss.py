"""A worker node lost mid-search: a real two-node Ray cluster on this machine (`ray start
--head` + `ray start --address`, each with its own temp dir), the smoke search driven from a
separate process, and the worker node stopped by killing the `ray start` this test launched
while one of its trials is between folds. Every trial must complete, the lost one resumed from
its checkpoint, and nothing may be left RUNNING in MLflow."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.hpo.results import FoldState, HpoResult
from tests.conftest import REPO, SMOKE
from tests.processes import (
    CLI,
    Cluster,
    alive_nodes,
    ray_node_env,
    start_logged,
    two_node_cluster,
)
from tests.run_outputs import embedded_store, mlflow_runs
from tests.waits import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.alone]


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = {
        **ray_node_env(secrets.token_hex(16)),
        # The head declares a lost node dead after ~2 s instead of ~15 s.
        "RAY_health_check_period_ms": "500",
        "RAY_health_check_failure_threshold": "4",
    }
    head_dir, node_dir = tmp_path_factory.mktemp("head"), tmp_path_factory.mktemp("node")
    with two_node_cluster(head_dir, node_dir, env) as started:
        yield started


def _trial_between_folds_on(node: str, tune_dir: Path) -> FoldState | None:
    """The checkpointed state of an unfinished trial whose first fold trained on ``node``: a
    trial none of whose checkpoints holds more than one fold (an earlier checkpoint of a trial
    that has since finished must not count: that trial has nothing left to lose)."""
    states: dict[Path, list[FoldState]] = {}
    for path in tune_dir.glob("round_1/trial_*/checkpoint_*/fold_state.json"):
        try:
            state = FoldState.model_validate_json(path.read_text())
        except (OSError, ValueError):
            continue
        states.setdefault(path.parent.parent, []).append(state)
    for trial in states.values():
        done = max(trial, key=lambda s: len(s.folds))  # the checkpoint furthest along
        if len(done.folds) == 1 and done.folds[0].node == node:
            return done
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
        os.killpg(cluster.worker.pid, signal.SIGKILL)  # the node goes, as a spot node would
        cluster.worker.wait()
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
