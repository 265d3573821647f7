"""A driver killed with SIGKILL mid-search and resumed by the default run.mode; SIGTERM."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.hpo.results import FoldState, HpoResult
from ray_pipeline.hpo.tune_state import checkpoint_index, checkpoints_after, recorded_checkpoints
from ray_pipeline.layout_names import TUNE_CHECKPOINT_PREFIX
from ray_pipeline.paths import trial_name, tune_snapshots
from tests.checkpoints import checkpoint_state, fold_histories, resumed_at
from tests.conftest import MakeExp
from tests.processes import cli_process, kill_started
from tests.run_outputs import embedded_store, mlflow_runs, study_states
from tests.waits import wait_for

pytestmark = pytest.mark.slow


def _hpo(path: Path, *overrides: str, log: Path) -> subprocess.Popen[bytes]:
    return cli_process("hpo", "--config", str(path), *overrides, log=log)


def _recorded_inside_fold_1(tune: Path) -> FoldState | None:
    """The state of the checkpoint Tune's snapshot would restore trial 1 from, once that is
    one inside fold 1 (None before, and while a snapshot is being written)."""
    try:
        name = recorded_checkpoints(tune).get(trial_name(1))
    except (OSError, ValueError):
        return None
    state = checkpoint_state(tune / trial_name(1) / name, FoldState) if name else None
    inside = state is not None and state.current is not None and state.current.fold == 1
    return state if inside else None


def _stage_a_replaced_checkpoint(trial_dir: Path) -> tuple[str, FoldState]:
    """Make the kill land at its worst moment: Tune had registered a newer checkpoint of the
    trial (deleting the one its snapshot names) and not yet written the snapshot. The
    recorded checkpoint becomes the next one (newer ones, never registered, go); when the kill
    really landed there, that is already so. The recorded name, and the state of the
    checkpoint the trial must resume from."""
    recorded = recorded_checkpoints(trial_dir.parent)[trial_dir.name]
    index = checkpoint_index(recorded)
    assert index is not None, recorded
    if (trial_dir / recorded).exists():
        for name in checkpoints_after(trial_dir, index):
            shutil.rmtree(trial_dir / name)
        (trial_dir / recorded).rename(trial_dir / f"{TUNE_CHECKPOINT_PREFIX}{index + 1:06d}")
    newer = checkpoints_after(trial_dir, index)
    assert newer, f"neither {recorded} nor a newer checkpoint of {trial_dir.name} is on disk"
    state = checkpoint_state(trial_dir / newer[0], FoldState)
    assert state is not None and state.current is not None, newer[0]
    return recorded, state


def test_sigkilled_driver_is_resumed_by_reuse_if_exists_inside_the_fold_it_was_in(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    path = smoke_experiment()
    outputs = tmp_path / "outputs"
    variant = outputs / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    db = variant / "study.db"
    # One trial at a time, folds of 20 epochs with a checkpoint after each: the kill lands
    # after trial 0 finished, once Tune's snapshot names a checkpoint inside trial 1's second
    # fold; then that checkpoint is made to look replaced (a kill between Tune's registration
    # of a newer one and its next snapshot).
    args = ["resources.max_concurrent_trials=1", "hpo.num_samples=2", "hpo.training.epochs=20"]

    first = _hpo(path, *args, log=tmp_path / "first.log")

    def running() -> bool:
        return first.poll() is None

    wait_for(lambda: "COMPLETE" in dict(study_states(db)).values(), "trial 0", 240, running)
    tune = variant / "tune" / "round_1"
    seen = wait_for(
        lambda: _recorded_inside_fold_1(tune),
        "Tune's snapshot to name a checkpoint inside trial 1's fold 1",
        240,
        running,
    )
    kill_started([first])  # the driver and everything it started, its Ray cluster too
    assert dict(study_states(db)) == {0: "COMPLETE", 1: "RUNNING"}
    assert seen.current is not None and [f.fold for f in seen.folds] == [0]
    recorded, restored = _stage_a_replaced_checkpoint(tune / trial_name(1))
    assert restored.current is not None and restored.current.fold == 1

    log = tmp_path / "second.log"  # the default run.mode, reuse_if_exists, resumes it
    second = _hpo(path, *args, log=log)
    assert second.wait(timeout=400) == 0, log.read_text()[-3000:]
    output = log.read_text()
    assert f"resuming {variant.name} (round_1)" in output
    assert f"trial_1: its snapshot names {recorded}, which Tune replaced by" in output
    assert "trial 1: resuming after 1 of 2 finished fold(s), inside fold 1 after" in output
    states = study_states(db)
    assert states == [(0, "COMPLETE"), (1, "COMPLETE")]  # the same two trials, no duplicates
    result = read_json(variant / "hpo.json", HpoResult)
    (resume,) = result.trials[1].resumes  # trial 1 went on inside fold 1, from that epoch on
    assert resumed_at(resume) == (1, restored.current.epochs_done)
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
    # The retry record sits on the retried trial's run, and only there.
    trial_runs = {
        r.data.tags["ray_pipeline.trial"]: r
        for r in runs
        if r.data.tags.get("ray_pipeline.kind") == "trial"
    }
    assert sorted(trial_runs) == ["0", "1"]
    assert trial_runs["1"].data.tags.get("ray_pipeline.resumed_at") == resume
    assert trial_runs["1"].data.metrics.get("retries") == 1.0
    untouched = trial_runs["0"].data
    assert "ray_pipeline.resumed_at" not in untouched.tags and "retries" not in untouched.metrics


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


def test_a_lowered_num_samples_caps_the_round_a_resume_restores(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    """Tune restores an interrupted round with the trial count its run wanted (50 here); the
    resumed run's num_samples (3) still caps it: no trial is launched past it."""
    path = smoke_experiment()
    variant = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    db, tune = variant / "study.db", variant / "tune" / "round_1"
    quick = ["hpo.training.epochs=1", "tracking.enabled=false"]
    first = _hpo(path, "hpo.num_samples=50", *quick, log=tmp_path / "first.log")

    def finished() -> int:
        return sum(state in ("COMPLETE", "PRUNED") for _, state in study_states(db))

    def three_and_a_snapshot() -> bool:  # a round Tune can restore, past the lowered count
        return finished() >= 3 and bool(
            tune.is_dir() and tune_snapshots([p.name for p in tune.iterdir()])
        )

    wait_for(
        three_and_a_snapshot,
        "3 finished trials and a Tune snapshot",
        240,
        lambda: first.poll() is None,
    )
    kill_started([first])  # the driver and everything it started, its Ray cluster too
    asked = [number for number, _ in study_states(db)]
    assert len(asked) < 50

    log = tmp_path / "second.log"
    second = _hpo(path, "hpo.num_samples=3", *quick, log=log)

    def ended_or_grew() -> bool:  # fails fast: a new trial shows before the run could end
        return second.poll() is not None or len(study_states(db)) > len(asked)

    try:
        wait_for(ended_or_grew, "the resumed run to end", 300)
    finally:
        if second.poll() is None:
            kill_started([second])
    output = log.read_text()
    assert [number for number, _ in study_states(db)] == asked, output[-3000:]  # none launched
    assert second.returncode == 0, output[-3000:]
    assert "resuming hpo_tiny-bert (round_1)" in output
    assert "finished reach hpo.num_samples 3: a restored round launches no new trial" in output
    states = dict(study_states(db))
    assert all(state in ("COMPLETE", "PRUNED", "FAIL") for state in states.values()), states
    result = read_json(variant / "hpo.json", HpoResult)
    assert result.finished >= 3 and result.num_samples == 3
