"""State that a killed process can tear or a disk can corrupt is read safely (issue 35,
points 4 and 5): the append-only failure log keeps every whole line around a torn one; a
study file that is not a study is an error naming the file and the ways out, not a traceback;
and a variant whose study is lost or stored elsewhere is refused, not searched over again."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution

from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.direction import Direction
from ray_pipeline.errors import PipelineError
from ray_pipeline.faults import failures_by_trial, read_failures, record_failure
from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.hpo.study import load_study, open_study, study_storage
from ray_pipeline.loading import load_config
from ray_pipeline.paths import VariantFiles
from ray_pipeline.schema import PipelineConfig, StudyCheckpoint
from ray_pipeline.variants import Variant
from tests.builders import add_hpo_variant
from tests.conftest import MakeExp


def test_a_torn_failure_line_spoils_only_itself(tmp_path: Path) -> None:
    log = tmp_path / "hpo_x" / "failures.jsonl"
    record_failure(log, 0, "tune", "RayActorError: the actor died")
    with log.open("ab") as handle:  # a writer killed in the middle of its line
        handle.write(b'{"trial": 1, "source": "tu')
    record_failure(log, 2, "train", "WorkerGroupError: a worker died")

    with pytest.warns(RuntimeWarning, match=r"failures.jsonl: line 2 .*torn"):
        failures = read_failures(log)
    assert [(f.trial, f.source) for f in failures] == [(0, "tune"), (2, "train")]
    with pytest.warns(RuntimeWarning):
        by_trial = failures_by_trial(log)
    assert by_trial == {
        0: ["tune: RayActorError: the actor died"],
        2: ["train: WorkerGroupError: a worker died"],
    }
    # Every line but the torn one is whole: the append after it started a line of its own.
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and lines[1] == '{"trial": 1, "source": "tu'


# `echo x > study.db`; a journal whose damage is not only its last line (Optuna's journal
# reader takes a bad last line for a torn append, as failures.jsonl does).
@pytest.mark.parametrize(("backend", "damage"), [("sqlite", b"x\n"), ("journal", b"x\nx\n")])
def test_a_corrupt_study_is_an_error_naming_the_file_and_the_way_out(
    tmp_path: Path, backend: str, damage: bytes
) -> None:
    files = VariantFiles(tmp_path / "hpo_x")
    checkpoint = StudyCheckpoint(storage_backend=backend)
    study_file = files.study_file(checkpoint.storage_path, "hpo_x", backend == "journal")
    study_file.parent.mkdir(parents=True)
    study_file.write_bytes(damage)

    with pytest.raises(PipelineError) as raised:
        open_study(files, "hpo_x", checkpoint, Direction.MAXIMIZE)
    message = str(raised.value)
    assert str(study_file) in message and "cannot be read" in message
    assert "hpo.run.mode=force_new" in message and "restore the file" in message
    assert study_file.read_bytes() == damage  # left as it was, for the user to look at


def _hpo_variant_with_study(
    smoke_experiment: MakeExp, *overrides: str
) -> tuple[Path, PipelineConfig, Variant]:
    """A complete HPO variant whose hpo.json records 3 finished trials, and the study (SQLite,
    at the default path) that holds them."""
    path = smoke_experiment()
    config = load_config(path, list(overrides))
    variant = add_hpo_variant(config, "tiny-bert", 0.8)
    checkpoint = config.hpo.checkpoint
    storage = study_storage(variant.files, variant.name, checkpoint)
    study = load_study(storage, variant.name, Direction.MAXIMIZE)
    for trial in read_json(variant.files.hpo_result, HpoResult).trials:
        study.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions={"learning_rate": FloatDistribution(1e-5, 1e-2, log=True)},
                value=trial.objective_mean,
            )
        )
    return path, config, variant


def test_a_study_lost_or_stored_elsewhere_is_refused_before_anything_runs(
    smoke_experiment: MakeExp, capsys: pytest.CaptureFixture[str]
) -> None:
    path, config, variant = _hpo_variant_with_study(smoke_experiment)
    study_file = variant.files.study_file(
        config.hpo.checkpoint.storage_path, variant.name, journal=False
    )
    assert main(["validate", "--config", str(path)]) == 0, capsys.readouterr().err
    recorded = variant.files.hpo_result.read_bytes()

    # Stored elsewhere: the journal backend would open an empty study beside the SQLite one.
    journal = "hpo.checkpoint.storage_backend=journal"
    assert main(["validate", "--config", str(path), journal]) == 2
    err = capsys.readouterr().err
    assert "hpo.checkpoint: hpo_tiny-bert: its hpo.json records 3 finished trial(s)" in err
    assert f"is at {study_file} (hpo.checkpoint.storage_backend=sqlite)" in err
    assert not study_file.with_suffix(".journal").exists()  # nothing written

    # Lost: the study file is gone.
    study_file.unlink()
    assert main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"its Optuna study {study_file} is missing" in err and "force_new" in err
    assert not study_file.exists() and variant.files.hpo_result.read_bytes() == recorded
    # force_new starts a new variant: nothing of the old one is continued, so no refusal.
    assert main(["validate", "--config", str(path), "hpo.run.mode=force_new"]) == 0
