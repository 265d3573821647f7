"""Reading what a running search or refit has checkpointed, and what a finished one logged,
to tell when a kill lands inside a fold and whether anything finished was trained again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from ray_pipeline.hpo.results import FoldState
from tests.run_outputs import embedded_store, mlflow_runs

M = TypeVar("M", bound=BaseModel)


def last_checkpoints(root: Path, trial_run: str | None, tune_trial: str = "*") -> list[Path]:
    """The checkpoints a retry would resume from: for a Ray Train run (``trial_run`` under
    ``root``), the latest one its controller registered (it can lag behind what is on disk);
    for Tune trials, the oldest one on disk under each ``root/<tune_trial>/``. A trial persists
    a checkpoint before Tune registers it, and reports the next only after that
    (``synchronous_result_reporting``); Tune deletes the older one once it registered the newer
    (``num_to_keep=1``). So a second checkpoint on disk is one not registered yet, which a kill
    would lose (the retry resumes from the first)."""
    if trial_run is None:
        oldest = [min(t.glob("checkpoint_*"), default=None) for t in root.glob(tune_trial)]
        return [c for c in oldest if c is not None]
    try:
        snapshot = json.loads((root / trial_run / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return []
    latest = snapshot.get("latest_checkpoint_result") or {}
    name = latest.get("checkpoint_dir_name")
    return [root / trial_run / name] if name else []


def checkpoint_state(checkpoint: Path, model: type[M]) -> M | None:
    """The ``*_state.json`` of a checkpoint; None while it is being written or deleted."""
    try:
        return model.model_validate_json(next(checkpoint.glob("*_state.json")).read_text())
    except (OSError, ValueError, StopIteration):  # mid-write, or deleted by num_to_keep
        return None


def inside_fold(
    root: Path, trial_run: str | None, fold: int, tune_trial: str = "*"
) -> FoldState | None:
    """A resumable checkpoint taken inside ``fold`` (or later) after one of its epochs."""
    for checkpoint in last_checkpoints(root, trial_run, tune_trial):
        state = checkpoint_state(checkpoint, FoldState)
        if state is not None and state.current is not None and state.current.fold >= fold:
            return state
    return None


def fold_histories(outputs: Path) -> dict[str, list[int]]:
    """Per MLflow run name of experiment ``t``: for a trial run, the steps at which it logged
    ``fold_objective``; for a fold run, a 1 per time it logged its ``objective`` (a retrained
    fold would log twice). Runs that share a name add up (a fold trained in two runs shows
    ``[1, 1]``), so these count runs, not names. Fails if a run was left RUNNING."""
    from mlflow import MlflowClient

    uri = embedded_store(outputs, "t")
    client, runs = MlflowClient(uri), mlflow_runs(uri, "t")
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    out: dict[str, list[int]] = {}
    for run in runs:
        kind = run.data.tags.get("ray_pipeline.kind")
        if kind == "fold":
            logged = [1] * len(client.get_metric_history(run.info.run_id, "objective"))
        elif kind == "trial":
            history = client.get_metric_history(run.info.run_id, "fold_objective")
            logged = [m.step for m in history]
        else:
            continue
        out[run.info.run_name] = sorted(out.get(run.info.run_name, []) + logged)
    return out


def resumed_at(resume: str) -> tuple[int, int]:
    """A trial's resume note ``fold F epoch E`` -> (F, E)."""
    words = resume.split()
    assert words[0] == "fold" and words[2] == "epoch", resume
    return int(words[1]), int(words[3])
