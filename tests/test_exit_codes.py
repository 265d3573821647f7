"""Exit codes 1 and 130 as a user meets them (0 and 2: tests/test_cli.py). A run that fails
at runtime exits 1 with a one-line error and its MLflow runs ended FAILED; Ctrl-C (a real
SIGINT to the CLI process) during HPO or during final training exits 130, keeps the finished
work, and leaves no MLflow run RUNNING (docs/tracking.md)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.cluster import ctrl_c_unwinds
from ray_pipeline.final.worker import epoch_checkpoints
from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.variants import VariantRecord
from tests.conftest import CONFIG_DIR, MakeExp
from tests.processes import cli_process, kill_started
from tests.run_outputs import embedded_store, kinds_and_states, mlflow_runs, study_states
from tests.waits import showing_log, wait_for

SMALL_BENCHMARK = {"benchmarking": {"batch_sizes": [1], "iterations": 5, "max_length": 32}}


@contextlib.contextmanager
def _cli(*args: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``ray-pipeline ARGS`` in a session of its own; whatever of it and of what it started is
    left at the end (all of it, if the test failed before it exited) is killed."""
    proc = cli_process(*args, log=log)
    try:
        yield proc
    finally:
        kill_started([proc])


def _ctrl_c(proc: subprocess.Popen[bytes], log: Path) -> str:
    """Send the CLI process SIGINT (what Ctrl-C sends it); its exit must be 130. Its output.
    A failure shows how the process handled signals when it was sent (its /proc status
    lines: blocked, ignored and caught signal masks; SIGINT is bit 1)."""
    status = Path(f"/proc/{proc.pid}/status").read_text()
    masks = [
        line for line in status.splitlines() if line.startswith(("SigBlk", "SigIgn", "SigCgt"))
    ]
    os.kill(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=180)
    output = log.read_text(errors="replace")
    assert code == 130, f"exit {code} (signal masks when sent: {masks}):\n{output[-4000:]}"
    assert "interrupted" in output.splitlines()
    return output


def _status(variant: Path) -> str:
    return read_json(variant / "variant.json", VariantRecord).status


def test_a_ray_train_exit_on_sigint_unwinds_as_an_interruption() -> None:
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), ctrl_c_unwinds():
        signal.signal(signal.SIGINT, lambda *_: None)  # as TorchTrainer.fit() does
        raise SystemExit(1)  # how its handler ends the driver after aborting the run
    assert signal.getsignal(signal.SIGINT) is before  # a later Ctrl-C is not swallowed
    with pytest.raises(SystemExit), ctrl_c_unwinds():
        raise SystemExit(1)  # an exit with SIGINT untouched is no interruption


@pytest.mark.slow
def test_ctrl_c_during_hpo_exits_130_and_keeps_finished_trials(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    path = smoke_experiment()
    variant = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    log = tmp_path / "run.log"
    # One trial at a time, long enough that the search is still going when the first finishes.
    args = ["hpo", "--config", str(path), "hpo.training.epochs=20"]
    with _cli(*args, "resources.max_concurrent_trials=1", log=log) as proc, showing_log(log):
        wait_for(
            lambda: "COMPLETE" in dict(study_states(variant / "study.db")).values(),
            "a complete trial",
            timeout=300,
            still_running=lambda: proc.poll() is None,
        )
        _ctrl_c(proc, log)

    states = dict(study_states(variant / "study.db"))
    complete = {n for n, state in states.items() if state == "COMPLETE"}
    assert complete and len(complete) < 3, states  # stopped mid-search, finished trials kept
    assert _status(variant) == "failed"  # resume_if_incomplete continues it
    runs = mlflow_runs(embedded_store(tmp_path / "outputs", "t"), "t")
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    kinds = kinds_and_states(runs)
    assert kinds[("variant", "KILLED")] == 1
    for run in runs:  # a finished trial's run stays FINISHED; one cut off is KILLED
        if run.data.tags["ray_pipeline.kind"] == "trial":
            done = int(run.data.tags["ray_pipeline.trial"]) in complete
            assert run.info.status == ("FINISHED" if done else "KILLED"), run.info.run_name
    assert kinds[("fold", "FINISHED")] >= 2 * len(complete)


@pytest.mark.slow
def test_ctrl_c_during_a_top_up_leaves_the_complete_variant_complete(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    path = smoke_experiment()
    variant = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    log = tmp_path / "first.log"
    with _cli("hpo", "--config", str(path), "hpo.num_samples=1", log=log) as proc:
        assert proc.wait(timeout=300) == 0, log.read_text(errors="replace")[-4000:]
    assert _status(variant) == "complete"
    # The suite's RAY_PIPELINE_INCLUDE_DASHBOARD=0 (tests/conftest.py) reached the CLI's cluster.
    assert "; dashboard: not running" in log.read_text(errors="replace")
    recorded = (variant / "hpo.json").read_bytes()

    # num_samples grew: the same variant is topped up, and the top-up is cut off.
    log = tmp_path / "top_up.log"
    args = ["hpo", "--config", str(path), "hpo.num_samples=3"]
    with _cli(*args, "resources.max_concurrent_trials=1", log=log) as proc, showing_log(log):
        wait_for(
            lambda: "RUNNING" in dict(study_states(variant / "study.db")).values(),
            "a top-up trial running",
            timeout=300,
            still_running=lambda: proc.poll() is None,
        )
        _ctrl_c(proc, log)

    # The finished trial and its record are as they were: the variant is still a candidate.
    assert _status(variant) == "complete"
    assert (variant / "hpo.json").read_bytes() == recorded
    assert (variant / "best").is_dir()


@pytest.mark.slow
def test_ctrl_c_during_final_training_exits_130_and_keeps_earlier_stages(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    path = smoke_experiment(benchmark=SMALL_BENCHMARK)
    outputs = tmp_path / "outputs"
    hpo = outputs / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    final = outputs / "t" / "final" / "tiny-bert" / "final_tiny-bert"
    log = tmp_path / "run.log"
    args = ["run", "--config", str(path), "hpo.num_samples=1", "final_training.epochs=100"]
    with _cli(*args, log=log) as proc, showing_log(log):
        wait_for(
            lambda: epoch_checkpoints(final / "checkpoints"),
            "final training's first epoch checkpoint",
            timeout=400,
            still_running=lambda: proc.poll() is None,
        )
        _ctrl_c(proc, log)

    # What HPO, benchmark and selection finished is kept.
    assert _status(hpo) == "complete"
    result = read_json(hpo / "hpo.json", HpoResult)
    assert result.best is not None and (hpo / "best").is_dir()
    assert (hpo / "benchmark.json").is_file()
    assert (outputs / "t" / "selection" / "selection.json").is_file()
    # The refit is not complete (no model, no metrics) and can be resumed.
    assert _status(final) == "failed"
    assert not (final / "model").exists() and not (final / "metrics.json").exists()
    runs = mlflow_runs(embedded_store(outputs, "t"), "t")
    states = {
        (r.data.tags["ray_pipeline.kind"], r.data.tags.get("ray_pipeline.stage"), r.info.status)
        for r in runs
    }
    assert states == {
        ("variant", "hpo", "FINISHED"),
        ("trial", "hpo", "FINISHED"),
        ("fold", "hpo", "FINISHED"),
        ("benchmark", "benchmark", "FINISHED"),
        ("selection", "select", "FINISHED"),
        ("variant", "final", "KILLED"),
    }


@pytest.mark.slow
def test_every_trial_failing_at_runtime_exits_1_with_runs_failed(
    ray_cluster: None,
    smoke_experiment: MakeExp,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A backbone whose weights file was cut off (an interrupted download or copy): the config
    # is valid, and the first trial to load the model finds out.
    model = tmp_path / "tiny_bert"
    shutil.copytree(CONFIG_DIR / "model" / "tiny_bert", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    path = str(smoke_experiment(model={"backbones": [{"name": "tiny-bert", "path": str(model)}]}))
    overrides = ["hpo.num_samples=2", "resources.max_failures=0"]
    assert main(["validate", "--config", path, *overrides]) == 0
    capsys.readouterr()

    assert main(["hpo", "--config", path, *overrides]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert "hpo tiny-bert: only 0 of 2 trials finished in hpo_tiny-bert" in errors[0]
    assert "trial 0: SafetensorError: Error while deserializing header" in errors[0]
    variant = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    assert _status(variant) == "failed"
    runs = mlflow_runs(embedded_store(tmp_path / "outputs", "t"), "t")
    assert kinds_and_states(runs) == {("variant", "FAILED"): 1, ("trial", "FAILED"): 2}
