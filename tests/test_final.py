"""Final training on real Ray: source checks, the run.mode rows (reuse, force_new, resume on a
complete variant), a changed selection, a named source trial, the `ray_pipeline.run()` API, and
a 2-worker refit SIGKILLed and resumed on one worker from its last epoch checkpoint."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import ray_pipeline
from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.errors import ConfigError
from ray_pipeline.final.results import FinalMetrics, Lineage
from ray_pipeline.final.stage import check_final
from ray_pipeline.final.worker import epoch_checkpoints
from ray_pipeline.loading import load_config
from ray_pipeline.selection import SelectionResult
from tests.builders import add_hpo_variant
from tests.conftest import CONFIG_DIR, MakeExp
from tests.processes import cli_process, kill_started
from tests.run_outputs import assert_model_classifies
from tests.waits import wait_for

pytestmark = pytest.mark.slow


@pytest.mark.usefixtures("ray_cluster")  # `train` checks run on Ray: keep it managed
def test_train_without_selection_or_source_exits_2_and_writes_nothing(
    smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = smoke_experiment()
    add_hpo_variant(load_config(path), "tiny-bert", 0.5)
    assert main(["train", "--config", str(path)]) == 2
    assert "no selection yet" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "final_training.source.variant=hpo_x"]) == 2
    assert "'hpo_x' is not an HPO variant of a configured backbone" in capsys.readouterr().err
    later = "final_training.source.variant=hpo_tiny-bert_v5"  # a valid name, not made yet
    for stages in ("final", "benchmark,select,final"):  # a named source needs no selection
        assert main(["run", "--stages", stages, "--config", str(path), later]) == 2
        assert "no HPO variant 'hpo_tiny-bert_v5' in this experiment (existing: hpo_tiny-bert)" in (
            capsys.readouterr().err
        )
    # The backbone the trial started from changed under the same name: refused, not refit.
    other = shutil.copytree(CONFIG_DIR / "model" / "tiny_bert", tmp_path / "other_bert")
    named = "final_training.source.variant=hpo_tiny-bert"
    assert main(["train", "--config", str(path), named, f"model.backbones.0.path={other}"]) == 2
    err = capsys.readouterr().err
    assert "backbone 'tiny-bert' changed since hpo_tiny-bert searched it" in err
    assert 'path ("tiny_bert" -> "other_bert")' in err
    outputs = tmp_path / "outputs" / "t"
    assert not (outputs / "final").exists() and not (outputs / "config.resolved.yaml").exists()


def _stamps(variant: Path) -> dict[str, tuple[int, int]]:
    """(mtime, size) of each file a final variant exported: changes if any is written again."""
    files = [variant / "metrics.json", variant / "lineage.json", *(variant / "model").iterdir()]
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in files}


@pytest.mark.usefixtures("ray_cluster")
def test_final_run_modes_a_changed_selection_and_a_named_trial(
    smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The final-training rows of docs/run-modes.md and docs/final-training.md, through the
    API and the CLI, asserted by which trial each variant refit (builders give every trial its
    own learning rate, 1e-4 * (number + 1)) and by which files were written."""
    path = smoke_experiment(final_training={"epochs": 1})
    config = load_config(path)
    add_hpo_variant(config, "tiny-bert", 0.80, trial=1)  # hpo_tiny-bert: trials 0-2, best 1
    final_dir = tmp_path / "outputs" / "t" / "final" / "tiny-bert"
    selection_file = tmp_path / "outputs" / "t" / "selection" / "selection.json"

    def refit(name: str) -> Lineage:
        return read_json(final_dir / name / "lineage.json", Lineage)

    # The API: a named trial that is not complete is refused before anything is written.
    missing = ["final_training.source.variant=hpo_tiny-bert", "final_training.source.trial=7"]
    with pytest.raises(ConfigError, match=r"no complete trial 7 \(complete: \[0, 1, 2\]\)"):
        ray_pipeline.run(path, stages=["final"], overrides=missing)
    assert not (tmp_path / "outputs" / "t" / "final").exists()
    # The API runs the later stages; the refit is the selection's winner, trial 1.
    ray_pipeline.run(path, stages=["benchmark", "select", "final"])
    first = refit("final_tiny-bert")
    assert (first.source.trial.variant, first.source.trial.number) == ("hpo_tiny-bert", 1)
    assert first.source.chosen_by == "selection"
    assert first.training.learning_rate == pytest.approx(2e-4)
    stamps = _stamps(final_dir / "final_tiny-bert")
    capsys.readouterr()

    # reuse_if_exists on a complete variant: nothing is trained or written.
    assert main(["train", "--config", str(path)]) == 0
    assert "final tiny-bert: reuse final_tiny-bert <- " in capsys.readouterr().out
    assert _stamps(final_dir / "final_tiny-bert") == stamps

    # A better variant makes the selection pick another trial: reuse_if_exists refuses to
    # pass the old refit off as the new winner's (exit 2); the selection is kept.
    add_hpo_variant(config, "tiny-bert", 0.90, trial=2)  # hpo_tiny-bert_v2, best trial 2
    later = ["run", "--stages", "benchmark,select,final", "--config", str(path)]
    assert main(later) == 2
    err = capsys.readouterr().err
    assert "final_training.run.mode: reuse_if_exists would reuse final_tiny-bert" in err
    assert "Set final_training.run.mode=force_new" in err
    winner = read_json(selection_file, SelectionResult).winner
    assert (winner.variant, winner.trial.number) == ("hpo_tiny-bert_v2", 2)
    assert [p.name for p in final_dir.iterdir()] == ["final_tiny-bert"]
    assert _stamps(final_dir / "final_tiny-bert") == stamps

    # force_new refits the new winner as _v2 and leaves the old variant untouched.
    assert main(["train", "--config", str(path), "final_training.run.mode=force_new"]) == 0
    second = refit("final_tiny-bert_v2")
    assert (second.source.trial.variant, second.source.trial.number) == ("hpo_tiny-bert_v2", 2)
    assert second.training.learning_rate == pytest.approx(3e-4)
    assert _stamps(final_dir / "final_tiny-bert") == stamps

    # resume_if_incomplete with the latest variant complete creates the next one; here it
    # refits a trial named in the config (source.trial), not the selection's winner.
    named = ["final_training.source.variant=hpo_tiny-bert", "final_training.source.trial=0"]
    resume = "final_training.run.mode=resume_if_incomplete"
    assert main(["train", "--config", str(path), resume, *named]) == 0
    third = refit("final_tiny-bert_v3")
    assert (third.source.trial.variant, third.source.trial.number) == ("hpo_tiny-bert", 0)
    assert third.source.chosen_by == "config"
    assert third.training.learning_rate == pytest.approx(1e-4)
    assert sorted(p.name for p in final_dir.iterdir()) == [
        "final_tiny-bert",
        "final_tiny-bert_v2",
        "final_tiny-bert_v3",
    ]
    assert _stamps(final_dir / "final_tiny-bert") == stamps
    metrics = read_json(final_dir / "final_tiny-bert_v3" / "metrics.json", FinalMetrics)
    assert [e.epoch for e in metrics.epochs] == [0]  # final_training.epochs, not the trial's 2
    assert_model_classifies(final_dir / "final_tiny-bert_v3" / "model")


@pytest.mark.usefixtures("ray_cluster")
def test_a_source_variant_typo_fails_before_any_stage_trains(
    smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = smoke_experiment()
    typo = "final_training.source.variant=hpo_tiny-bret"
    assert main(["run", "--config", str(path), typo]) == 2
    err = capsys.readouterr().err
    assert "final_training.source.variant: 'hpo_tiny-bret' is not an HPO variant" in err
    assert "hpo_tiny-bert, hpo_tiny-bert_v2, ..." in err
    assert not (tmp_path / "outputs" / "t").exists()  # no stage ran, nothing written
    # A variant this run's HPO stage may still create passes the check.
    config = load_config(path, ["final_training.source.variant=hpo_tiny-bert_v3"])
    check_final(config, ("hpo", "benchmark", "select", "final"))


def test_a_refit_killed_on_two_workers_resumes_on_one_from_its_last_epoch(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    """A spot cluster that came back smaller: a DDP refit (2 workers) is SIGKILLed after an
    epoch checkpoint; the next run (reuse_if_exists, the default) resumes it on the default
    one worker, and every epoch is trained exactly once."""
    epochs = 8
    path = smoke_experiment()
    add_hpo_variant(load_config(path), "tiny-bert", 0.5, trial=4)
    args = ("final_training.source.variant=hpo_tiny-bert", f"final_training.epochs={epochs}")
    variant = tmp_path / "outputs" / "t" / "final" / "tiny-bert" / "final_tiny-bert"

    two = "final_training.resources.workers=2"
    first = cli_process("train", "--config", str(path), *args, two, log=tmp_path / "first.log")
    wait_for(
        lambda: epoch_checkpoints(variant / "checkpoints"),
        "the 2-worker refit's first epoch checkpoint",
        timeout=180,
        still_running=lambda: first.poll() is None,
    )
    kill_started([first])  # the driver and the Ray cluster it started
    assert not (variant / "model").exists() and not (variant / "metrics.json").exists()

    log = tmp_path / "second.log"
    second = cli_process("train", "--config", str(path), *args, log=log)
    assert second.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert "resume final_tiny-bert" in log.read_text()
    metrics = read_json(variant / "metrics.json", FinalMetrics)
    start = metrics.resumed_from_epoch
    assert start is not None and 1 <= start < epochs, start
    assert [e.epoch for e in metrics.epochs] == list(range(epochs))  # each epoch exactly once
    before = {e.attempt for e in metrics.epochs[:start]}
    after = {e.attempt for e in metrics.epochs[start:]}
    assert len(before) == 1 and len(after) == 1 and before != after  # two runs, one history
    # The resumed run is the default plan on one node: one task training on all its cores.
    refit = metrics.refit
    assert refit is not None and (refit.workers, refit.backend) == (1, "task")
    found = re.search(r"^ray: (\d+) CPUs", log.read_text(), re.MULTILINE)
    assert found is not None and refit.threads_per_worker == refit.cpus_per_worker == int(found[1])
    assert refit.effective_batch_size == metrics.source.trial.training.batch_size
    # What each epoch really ran on: 2 workers x 1 thread, then 1 worker with every core.
    ran = [(e.workers, e.threads) for e in metrics.epochs]
    assert ran == [(2, 1)] * start + [(1, int(found[1]))] * (epochs - start), ran
    assert [p.name for p in variant.parent.iterdir()] == ["final_tiny-bert"]  # one variant
    lineage = read_json(variant / "lineage.json", Lineage)
    assert lineage.refit == metrics.refit
    assert (lineage.source.trial.variant, lineage.source.trial.number) == ("hpo_tiny-bert", 4)
    # The refit trained with what trial 4 trained with, not trial 0's (the first) settings.
    trained = lineage.source.trial.params["learning_rate"]  # builders: 1e-4 * (number + 1)
    assert lineage.training.learning_rate == trained == pytest.approx(5e-4)
    assert lineage.source.chosen_by == "config"
    assert_model_classifies(variant / "model", learned=True)  # 8 epochs at 5e-4
