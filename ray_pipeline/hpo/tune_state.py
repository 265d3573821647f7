"""A Tune round's snapshot, read before the round is restored, and the one repair it may need.

Tune registers a trial's new checkpoint, deletes the one before it (``num_to_keep=1``), and
only then writes the experiment snapshot and syncs it to the round directory in the
background. A driver killed in between (a preempted head node, SIGKILL) leaves a snapshot that
names a deleted checkpoint, and Tune's restore of that trial fails on every retry ("Could not
recover from checkpoint as it does not exist on storage anymore"): the trial's finished folds
would be lost. The checkpoint that replaced it is on disk and complete (Tune registers only
checkpoints the trial has persisted), so it takes the recorded name; anything newer was
written but never registered (perhaps only partly) and is removed.

The snapshot's format is Tune's, undocumented: ``internals.tune_snapshot_trials`` reads it,
and where it is not the format read from Ray 2.60 there is no repair (a warning says so).
"""

from __future__ import annotations

import json
from os import PathLike

from ray_pipeline import storage
from ray_pipeline.internals import tune_snapshot_trials
from ray_pipeline.layout_names import TUNE_CHECKPOINT_PREFIX
from ray_pipeline.paths import tune_snapshots

FINISHED = ("TERMINATED", "ERROR")
"""Trial statuses Tune does not resume from a checkpoint."""

Place = str | PathLike[str]
"""A round or trial directory: a local path or a URI (``storage.uri``)."""


def checkpoint_index(name: str) -> int | None:
    """``checkpoint_000009`` -> 9; None for any other name."""
    digits = name.removeprefix(TUNE_CHECKPOINT_PREFIX)
    return int(digits) if name.startswith(TUNE_CHECKPOINT_PREFIX) and digits.isdigit() else None


def checkpoints_after(trial_dir: Place, index: int) -> list[str]:
    """The names of a trial's checkpoints with an index above ``index``, oldest first."""
    found = [(checkpoint_index(n), n) for n in storage.children(trial_dir, TUNE_CHECKPOINT_PREFIX)]
    return [n for i, n in sorted((i, n) for i, n in found if i is not None and i > index)]


def torn_snapshot(round_dir: Place) -> str | None:
    """The name of the round's newest snapshot when it is not JSON (a write cut off, a damaged
    disk): Tune would fail to restore the round on every resume. None when it reads, or when
    there is none."""
    snapshots = tune_snapshots(storage.children(round_dir))
    if not snapshots:
        return None
    try:
        json.loads(storage.read_text(storage.join(round_dir, snapshots[-1])))
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        return snapshots[-1]
    return None


def recorded_checkpoints(round_dir: Place) -> dict[str, str]:
    """For each unfinished trial of the newest snapshot: its directory name -> the name of the
    checkpoint Tune will restore it from (trials without one are left out)."""
    snapshots = tune_snapshots(storage.children(round_dir))
    if not snapshots:
        return {}
    text = storage.read_text(storage.join(round_dir, snapshots[-1]))
    trials = tune_snapshot_trials(text, snapshots[-1]) or []  # None: a format not read here
    return {
        t.directory: t.checkpoint
        for t in trials
        if t.status not in FINISHED and t.directory is not None and t.checkpoint is not None
    }


def repair_recorded_checkpoints(round_dir: Place) -> list[str]:
    """Give every recorded checkpoint that Tune replaced before its snapshot was written the
    checkpoint that replaced it (see the module's docstring); what was done, one line each."""
    notes = []
    for trial, name in recorded_checkpoints(round_dir).items():
        trial_dir, index = storage.join(round_dir, trial), checkpoint_index(name)
        if index is None or storage.is_dir(storage.join(trial_dir, name)):
            continue
        newer = checkpoints_after(trial_dir, index)
        if not newer:
            continue
        replacement, *unregistered = newer
        for stale in unregistered:
            storage.delete(storage.join(trial_dir, stale))
        storage.move(storage.join(trial_dir, replacement), storage.join(trial_dir, name))
        dropped = f"; dropped unregistered {', '.join(unregistered)}"
        notes.append(
            f"{trial}: its snapshot names {name}, which Tune replaced by {replacement} "
            f"before the driver stopped; resuming from {replacement}"
            + (dropped if unregistered else "")
        )
    return notes
