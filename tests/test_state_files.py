"""State that a killed process can tear or a disk can corrupt is read safely (issue 35,
point 5): the append-only failure log keeps every whole line around a torn one, and a study
file that is not a study is an error naming the file and the ways out, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_pipeline.direction import Direction
from ray_pipeline.errors import PipelineError
from ray_pipeline.faults import failures_by_trial, read_failures, record_failure
from ray_pipeline.hpo.study import open_study
from ray_pipeline.paths import VariantFiles
from ray_pipeline.schema import StudyCheckpoint


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
