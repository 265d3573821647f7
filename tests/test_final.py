"""Final training on real Ray: source checks, and a SIGKILLed refit resumed from its last
epoch checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.final.results import FinalMetrics, Lineage
from ray_pipeline.loading import load_config
from tests.builders import add_hpo_variant

MakeExp = Callable[..., Path]
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
    assert "no HPO variant 'hpo_x' in this experiment (existing: hpo_tiny-bert)" in (
        capsys.readouterr().err
    )
    outputs = tmp_path / "outputs" / "t"
    assert not (outputs / "final").exists() and not (outputs / "config.resolved.yaml").exists()


def _train(path: Path, *overrides: str, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "ray_pipeline", "train", "--config", str(path), *overrides]
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _checkpointed_epochs(snapshot: Path) -> int:
    """Checkpoints Ray Train has registered (what a restarted run restores from)."""
    try:
        return len(json.loads(snapshot.read_text()).get("checkpoint_results", []))
    except (OSError, ValueError):
        return 0


def test_sigkilled_final_training_resumes_from_its_last_epoch(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    epochs = 60
    path = smoke_experiment()
    add_hpo_variant(load_config(path), "tiny-bert", 0.5, trial=4)
    args = ("final_training.source.variant=hpo_tiny-bert", f"final_training.epochs={epochs}")
    variant = tmp_path / "outputs" / "t" / "final" / "tiny-bert" / "final_tiny-bert"
    snapshot = variant / "checkpoints" / "checkpoint_manager_snapshot.json"

    first = _train(path, *args, log=tmp_path / "first.log")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and _checkpointed_epochs(snapshot) == 0:
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
    first.wait()
    assert not (variant / "model").exists() and not (variant / "metrics.json").exists()

    log = tmp_path / "second.log"
    second = _train(path, *args, "final_training.run.mode=resume_if_incomplete", log=log)
    assert second.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert "resume final_tiny-bert" in log.read_text()
    metrics = read_json(variant / "metrics.json", FinalMetrics)
    start = metrics.resumed_from_epoch
    assert start is not None and 1 <= start < epochs, start
    assert [e.epoch for e in metrics.epochs] == list(range(epochs))  # each epoch exactly once
    before = {e.attempt for e in metrics.epochs[:start]}
    after = {e.attempt for e in metrics.epochs[start:]}
    assert len(before) == 1 and len(after) == 1 and before != after  # two runs, one history
    assert [p.name for p in variant.parent.iterdir()] == ["final_tiny-bert"]  # one variant
    lineage = read_json(variant / "lineage.json", Lineage)
    assert (lineage.source.variant, lineage.source.trial) == ("hpo_tiny-bert", 4)
    assert lineage.source.chosen_by == "config"
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(variant / "model"))
    assert classify("Fresh and tasty tea.")[0]["label"] in {"great", "other"}
