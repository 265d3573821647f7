"""The repair of a Tune round whose snapshot names a checkpoint Tune had already replaced
(a driver killed between registering a trial's new checkpoint and writing the snapshot). The
snapshot here is written in Tune's shape; tests/test_hpo_resume.py restores a real one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_pipeline.hpo.tune_state import (
    checkpoint_index,
    recorded_checkpoints,
    repair_recorded_checkpoints,
    torn_snapshot,
)


def _snapshot(round_dir: Path, name: str, trials: dict[str, tuple[str, str | None]]) -> None:
    """An ``experiment_state`` file: per trial directory, its status and last checkpoint."""
    data = [
        [
            json.dumps({"relative_logdir": trial, "status": status}),
            json.dumps({"last_result": {"checkpoint_dir_name": checkpoint}}),
        ]
        for trial, (status, checkpoint) in trials.items()
    ]
    (round_dir / name).write_text(json.dumps({"trial_data": data, "runner_data": {}}))


def _checkpoint(round_dir: Path, trial: str, index: int) -> Path:
    path = round_dir / trial / f"checkpoint_{index:06d}"
    path.mkdir(parents=True)
    (path / "epoch").write_text(str(index))
    return path


def test_checkpoint_index() -> None:
    assert checkpoint_index("checkpoint_000009") == 9
    assert checkpoint_index("checkpoint_tmp") is None and checkpoint_index("model") is None


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "uri"])
def test_a_replaced_checkpoint_takes_its_replacement_and_unregistered_ones_go(
    tmp_path: Path, as_uri: bool
) -> None:
    """On a path, and on a URI (``storage.uri``: a directory moves by copy and delete)."""
    where = tmp_path.as_uri() if as_uri else tmp_path
    # An older snapshot names checkpoint 3; the newest (restored) one names 9, which Tune
    # deleted when it registered 10; 11 was written and never registered.
    _snapshot(
        tmp_path,
        "experiment_state-2026-11-30_01-00-00.json",
        {"trial_1": ("RUNNING", "checkpoint_000003")},
    )
    _snapshot(
        tmp_path,
        "experiment_state-2026-11-30_01-47-06.json",
        {
            "trial_0": ("TERMINATED", "checkpoint_000039"),  # finished: never restored
            "trial_1": ("RUNNING", "checkpoint_000009"),
            "trial_2": ("PENDING", None),  # not started: nothing to restore
            "trial_3": ("RUNNING", "checkpoint_000004"),  # its checkpoint is there
        },
    )
    for index in (10, 11):
        _checkpoint(tmp_path, "trial_1", index)
    intact = _checkpoint(tmp_path, "trial_3", 4)
    assert recorded_checkpoints(where) == {
        "trial_1": "checkpoint_000009",
        "trial_3": "checkpoint_000004",
    }

    (note,) = repair_recorded_checkpoints(where)
    assert "trial_1" in note and "checkpoint_000010" in note and "checkpoint_000011" in note
    trial_1 = tmp_path / "trial_1"
    assert [p.name for p in trial_1.iterdir()] == ["checkpoint_000009"]
    assert (trial_1 / "checkpoint_000009" / "epoch").read_text() == "10"  # the registered one
    assert (intact / "epoch").read_text() == "4"
    assert repair_recorded_checkpoints(where) == []  # nothing left to repair


def test_a_missing_checkpoint_with_nothing_newer_is_left_to_tune(tmp_path: Path) -> None:
    _snapshot(
        tmp_path,
        "experiment_state-2026-11-30_01-47-06.json",
        {"trial_1": ("RUNNING", "checkpoint_000009")},
    )
    older = _checkpoint(tmp_path, "trial_1", 8)  # older than the recorded one: never used
    assert repair_recorded_checkpoints(tmp_path) == []
    assert [p.name for p in (tmp_path / "trial_1").iterdir()] == [older.name]


def test_a_round_without_a_snapshot_has_nothing_recorded(tmp_path: Path) -> None:
    assert recorded_checkpoints(tmp_path) == {} and repair_recorded_checkpoints(tmp_path) == []


def test_a_torn_newest_snapshot_is_found_and_an_older_torn_one_does_not_matter(
    tmp_path: Path,
) -> None:
    old, new = (
        "experiment_state-2026-12-01_10-00-00.json",
        "experiment_state-2026-12-02_10-00-00.json",
    )
    _snapshot(tmp_path, new, {"trial_a": ("RUNNING", "checkpoint_000001")})
    assert torn_snapshot(tmp_path) is None
    (tmp_path / old).write_text('{"trial_data": [[')  # only the newest is restored from
    assert torn_snapshot(tmp_path) is None
    text = (tmp_path / new).read_text()
    (tmp_path / new).write_text(text[: len(text) // 2])  # a write cut off half-way
    assert torn_snapshot(tmp_path) == new
    (tmp_path / new).write_bytes(b"\xff\xfe not text")
    assert torn_snapshot(tmp_path) == new
