"""Reading back what a pipeline run left behind: its MLflow runs, its Optuna trials and its
exported model."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.entities import Run


def embedded_store(outputs: Path, experiment: str) -> str:
    """The tracking URI of ``experiment``'s embedded MLflow store under the outputs root."""
    return f"sqlite:///{outputs / experiment / 'mlflow.db'}"


def mlflow_runs(tracking_uri: str, experiment: str) -> list[Run]:
    """Every run of the MLflow experiment ``experiment``, which must exist."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} at {tracking_uri}"
    return list(client.search_runs([found.experiment_id]))


def kinds_and_states(runs: Iterable[Run]) -> Counter[tuple[str | None, str]]:
    """How many runs of each (``ray_pipeline.kind`` tag, status)."""
    return Counter((r.data.tags.get("ray_pipeline.kind"), r.info.status) for r in runs)


def study_states(db: Path) -> list[tuple[int, str]]:
    """(number, state) of each trial in an Optuna SQLite study, in trial order; empty while
    the file is not there yet or mid-migration (read-only: safe to poll while a search
    creates and writes it)."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return list(conn.execute("SELECT number, state FROM trials ORDER BY number"))
    except sqlite3.Error:
        return []


def assert_model_classifies(model: Path) -> None:
    """The exported smoke model loads in `transformers.pipeline` and labels a review."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(model))
    assert classify("Fresh and tasty tea.")[0]["label"] in {"great", "other"}
