"""A reused trial process lost while Tune keeps it for the next trial (issue 35, point 7).

When a trial completes, Ray Tune keeps its process for the next trial (``reuse_actors``) and
sends it a ``reset``; nothing watches a kept process, so its death shows only then. Ray 2.60
handles that one ``RayActorError`` twice (``internals.tune_failures_once``): the waiting trial
is requeued, then errored for good with retries left. The process is killed here at the one
moment that makes this certain: in a callback's ``on_trial_complete``, in the driver, before
Tune keeps it. With Tune alone, the trial errors unguarded (if that ever stops, Ray fixed it
and the guard can go) and completes guarded; through the CLI, the search completes and the
loss is one failure in ``hpo.json`` and ``failures.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ray.tune import Callback

from ray_pipeline import faults, internals
from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.hpo import tuning
from ray_pipeline.hpo.results import HpoResult
from tests.conftest import MakeExp, this_cluster
from tests.waits import wait_for

pytestmark = pytest.mark.slow

MISSED = "missed"
"""The marker's content where no trial was left to take the killed process."""


def _kill_trial_process(trial: Any) -> None:
    """Kill the process of ``trial`` (Ray's kill of its actor) and wait until Ray reports that
    actor dead."""
    import ray
    from ray.util.state import get_actor, list_actors

    handle = trial.temporary_state.ray_actor
    _, pid = ray.get(handle.get_current_ip_pid.remote())
    address = this_cluster()
    alive = list_actors(address, filters=[("state", "=", "ALIVE")], detail=True)
    (actor,) = [a for a in alive if a.pid == pid and a.class_name.endswith("ImplicitFunc")]
    ray.kill(handle, no_restart=True)
    wait_for(
        lambda: getattr(get_actor(actor.actor_id, address=address), "state", None) == "DEAD",
        f"Ray to report the trial process {pid} dead",
        timeout=60,
    )


class KillFinishedProcess(Callback):
    """Kills the process of the first trial to complete, once, while more trials are to come;
    writes ``marker``: how many trials there were then (the next trial takes the process), or
    ``MISSED``."""

    def __init__(self, num_samples: int, marker: Path) -> None:
        self.num_samples, self.marker = num_samples, marker
        self.trials: list[Any] = []

    def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
        self.trials = trials
        if self.marker.exists():
            return
        if len(trials) >= self.num_samples:
            self.marker.write_text(json.dumps(MISSED))
            return
        _kill_trial_process(trial)
        self.marker.write_text(json.dumps(len(trials)))


def _next_trial(marker: Path) -> int:
    """The index of the trial that took the killed process (the precondition met)."""
    assert marker.is_file(), "no trial completed"
    taken = json.loads(marker.read_text())
    assert taken != MISSED, "no trial was left to take the killed process: nothing was tested"
    return int(taken)


def _rays_own_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tune's controller with Ray's own failure handlers, unguarded, for this test (also where
    an earlier run in this process put the guard in place)."""
    from ray.tune.execution.tune_controller import TuneController

    for name, _ in internals.TUNE_FAILURE_HANDLERS:
        method = getattr(TuneController, name)
        monkeypatch.setattr(TuneController, name, getattr(method, "__wrapped__", method))
    monkeypatch.setattr(TuneController, internals.TUNE_FAILURES_ONCE, False, raising=False)


def _report(config: dict[str, Any]) -> None:
    from ray import tune

    tune.report({"x": config["x"]})


@pytest.mark.parametrize("guarded", [False, True], ids=["rays own", "guarded"])
def test_tune_errors_the_trial_given_a_dead_process_unless_guarded(
    ray_with_state_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, guarded: bool
) -> None:
    from ray import tune

    _rays_own_handlers(monkeypatch)
    if guarded:
        assert internals.tune_failures_once()
    marker = tmp_path / "killed.json"
    kill = KillFinishedProcess(3, marker)
    tuner = tune.Tuner(
        tune.with_resources(_report, {"cpu": 1}),
        param_space={"x": tune.grid_search([1, 2, 3])},
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "tune"),
            failure_config=tune.FailureConfig(max_failures=1),
            callbacks=[kill],
            verbose=0,
        ),
    )
    tuner.fit()
    taken = _next_trial(marker)
    outcome = [(t.status, t.num_failures) for t in kill.trials]
    expected = [("TERMINATED", 0)] * 3
    # One loss: Ray's own handling counts two failures and errors the trial (max_failures=1).
    expected[taken] = ("TERMINATED", 1) if guarded else ("ERROR", 2)
    assert outcome == expected


def test_a_search_completes_and_counts_a_lost_reused_process_once(
    ray_with_state_api: None,
    smoke_experiment: MakeExp,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    marker = tmp_path / "killed.json"
    callbacks = tuning._callbacks
    monkeypatch.setattr(
        tuning, "_callbacks", lambda r: [*callbacks(r), KillFinishedProcess(3, marker)]
    )
    args = ["hpo", "--config", str(smoke_experiment()), "hpo.num_samples=3"]
    args += ["resources.max_concurrent_trials=1", "tracking.enabled=false"]
    code = main(args)
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]

    taken = _next_trial(marker)  # a fresh study: the trial numbered as its index
    variant = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    trials = read_json(variant / "hpo.json", HpoResult).trials
    assert [(t.number, t.state) for t in trials] == [(n, "COMPLETE") for n in range(3)]
    assert [len(t.failures) for t in trials] == [int(t.number == taken) for t in trials]
    recorded = faults.read_failures(variant / "failures.jsonl")
    assert [f.trial for f in recorded] == [taken], recorded
    assert "retry 1 of 3" in out and "no retries left" not in out, out[-4000:]
