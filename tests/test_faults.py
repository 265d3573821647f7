"""Faults survived on a real local Ray cluster: a killed Train worker of a DDP trial, a killed
one-worker trial process, a killed benchmark actor and a killed final-training process. Each
test kills exactly what it started (a pid Ray reports for the actor or task it runs, or an
actor with ``ray.kill``) and checks from the results and MLflow that finished work was not
redone."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.final.results import FinalMetrics
from ray_pipeline.final.worker import epoch_checkpoints
from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.loading import load_config
from tests.builders import add_hpo_variant
from tests.checkpoints import fold_histories, inside_fold, resumed_at
from tests.conftest import MakeExp, this_cluster
from tests.run_outputs import assert_model_classifies
from tests.waits import InThread, poll_until, wait_for

pytestmark = pytest.mark.slow
TRIAL_PROCESS = "ImplicitFunc"  # the actor class Ray Tune runs a function trainable in
TRAIN_WORKER = "RayTrainWorker"


def _alive_pids(class_name: str) -> list[int]:
    """Pids of the live actors of Ray class ``class_name`` (Tune's trainable class is reported
    as ``ImplicitFunc`` or ``wrap_function.<locals>.ImplicitFunc``)."""
    from ray.util.state import list_actors

    found = list_actors(this_cluster(), filters=[("state", "=", "ALIVE")])
    return sorted(int(a.pid) for a in found if a.class_name.split(".")[-1] == class_name and a.pid)


@pytest.mark.parametrize(
    ("workers", "victim", "checkpoints", "trial_run", "folds"),
    [
        (1, TRIAL_PROCESS, "tune/round_1", None, 2),
        # Ray Train registers reports a few seconds behind the workers: a third fold leaves
        # time to kill a worker before the trial ends.
        (2, TRAIN_WORKER, "train", "trial_0", 3),
    ],
    ids=["trial-process", "ddp-train-worker"],
)
def test_killed_trial_resumes_inside_its_fold(
    ray_with_state_api: None,
    smoke_experiment: MakeExp,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    workers: int,
    victim: str,
    checkpoints: str,
    trial_run: str | None,
    folds: int,
) -> None:
    path = smoke_experiment()
    args = ["hpo", "--config", str(path), "hpo.num_samples=1", f"hpo.k_folds={folds}"]
    args += ["hpo.training.epochs=12", f"resources.workers_per_trial={workers}"]
    variant = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    run = InThread(main, args)
    seen = wait_for(
        lambda: inside_fold(variant / checkpoints, trial_run, 1),
        "an epoch checkpoint inside fold 1",
        timeout=180,
        still_running=run.running,
    )
    assert seen.current is not None and len(seen.folds) >= 1
    pid = wait_for(lambda: _alive_pids(victim), f"a live {victim}", 60)[0]
    os.kill(pid, signal.SIGKILL)

    assert run.result(timeout=300) == 0
    (trial,) = read_json(variant / "hpo.json", HpoResult).trials
    assert trial.state == "COMPLETE"
    assert [f.fold for f in trial.folds] == list(range(folds))
    assert all(f.workers == workers for f in trial.folds)
    # One retry, picked up inside a fold at (or after) the epoch checkpoint seen before the kill.
    (resume,) = trial.resumes
    assert resumed_at(resume) >= (seen.current.fold, seen.current.epochs_done)
    assert trial.failures, "the failure's cause is recorded in hpo.json"
    # Every fold was trained and logged once: a retrained fold would log its objective again.
    histories = fold_histories(tmp_path / "outputs")
    assert histories["hpo_tiny-bert_trial_0"] == list(range(folds))
    assert {name: n for name, n in histories.items() if "_fold" in name} == {
        f"hpo_tiny-bert_trial_0_fold{k}": [1] for k in range(folds)
    }
    out = capsys.readouterr().out
    assert "resuming after" in out and "failed" in out


def test_killed_benchmark_actor_is_restarted_and_every_benchmark_lands(
    ray_with_state_api: None, smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    import ray
    from ray.util.state import list_actors, list_tasks
    from ray.util.state.common import TaskState

    path = smoke_experiment(
        benchmark={"benchmarking": {"batch_sizes": [1], "iterations": 3000, "max_length": 16}},
        resources={"cpus_per_worker": 1, "max_failures": 2},
    )
    config = load_config(path)
    for trial, score in enumerate((0.6, 0.7, 0.8)):
        add_hpo_variant(config, "tiny-bert", score, trial=trial)
    run = InThread(main, ["benchmark", "--config", str(path)])

    def measuring() -> list[TaskState]:
        tasks = list_tasks(
            this_cluster(), filters=[("name", "=", "BenchmarkActor.run"), ("state", "=", "RUNNING")]
        )
        return list(tasks)

    # Kill the actor that is measuring now (not a pool member by name, which may be idle).
    task = wait_for(measuring, "a benchmark actor measuring", 120, run.running)[0]
    (actor,) = list_actors(this_cluster(), filters=[("actor_id", "=", str(task.actor_id))])
    assert actor.name, actor  # the pool's actors are named
    ray.kill(ray.get_actor(actor.name), no_restart=False)  # like a lost node: Ray may restart it

    assert run.result(timeout=300) == 0
    found = sorted(p.parent.name for p in (tmp_path / "outputs").glob("t/hpo/*/*/benchmark.json"))
    assert found == ["hpo_tiny-bert", "hpo_tiny-bert_v2", "hpo_tiny-bert_v3"]

    # The measurement the kill cut off failed and was measured again (a retry of the task).
    # The state API hears of a task's attempts later than the stage does (task events are
    # reported in batches; in a full run it still saw the retry RUNNING): wait until it knows
    # of two attempts or more, all ended.
    def ended_attempts() -> list[tuple[int, str]] | None:
        found = list_tasks(this_cluster(), filters=[("task_id", "=", task.task_id)], detail=True)
        states = sorted((t.attempt_number, str(t.state)) for t in found)
        ended = len(states) >= 2 and all(s in ("FAILED", "FINISHED") for _, s in states)
        return states if ended else None

    what = "two ended attempts of the cut-off measurement"
    states = poll_until(ended_attempts, what, 60, interval=0.5)
    assert states == [(0, "FAILED"), (1, "FINISHED")], states
    (after,) = list_actors(this_cluster(), filters=[("name", "=", actor.name)], detail=True)
    assert after.num_restarts == 1  # restarted once after the kill, then ended by the stage


def _final_task_pids(name: str) -> list[int]:
    """Worker pids of the running Ray task ``name`` (final training on one worker)."""
    from ray.util.state import list_tasks

    found = list_tasks(this_cluster(), filters=[("name", "=", name), ("state", "=", "RUNNING")])
    return sorted(int(t.worker_pid) for t in found if t.worker_pid)


def test_killed_final_training_process_resumes_from_its_epoch_checkpoint(
    ray_with_state_api: None, smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    epochs = 15
    path = smoke_experiment()
    add_hpo_variant(load_config(path), "tiny-bert", 0.5, trial=1)
    args = ["train", "--config", str(path), "final_training.source.variant=hpo_tiny-bert"]
    args += [f"final_training.epochs={epochs}"]
    variant = tmp_path / "outputs" / "t" / "final" / "tiny-bert" / "final_tiny-bert"
    run = InThread(main, args)
    wait_for(
        lambda: epoch_checkpoints(variant / "checkpoints"),
        "final training's first epoch checkpoint",
        timeout=180,
        still_running=run.running,
    )
    task = "final final_tiny-bert"  # the task's name: final_training's one worker
    pid = wait_for(lambda: _final_task_pids(task), "the running final-training task", 60)[0]
    os.kill(pid, signal.SIGKILL)

    assert run.result(timeout=300) == 0
    metrics = read_json(variant / "metrics.json", FinalMetrics)
    start = metrics.resumed_from_epoch
    assert start is not None and 1 <= start < epochs, start
    assert [e.epoch for e in metrics.epochs] == list(range(epochs))  # each epoch exactly once
    assert len(metrics.failures) == 1, metrics.failures  # the lost process, recorded once
    assert metrics.refit is not None and metrics.refit.backend == "task"
    assert_model_classifies(variant / "model", learned=True)  # 15 epochs at 2e-4
