"""Reading back what a pipeline run left behind: its MLflow runs, its Optuna trials and its
exported model."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

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


def study_states(path: Path) -> list[tuple[int, str]]:
    """(number, state) of each trial in an Optuna study file (SQLite, or a ``.journal`` file
    of Optuna's journal storage), in trial order; empty while the file, its ``trials`` table or
    its study is not there yet (read-only: safe to poll while a search creates and writes it).
    Any other database error is raised."""
    if not path.exists():
        return []
    if path.suffix == ".journal":
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(path)))
        studies = storage.get_all_studies()
        if not studies:  # created, the study not written yet
            return []
        (study,) = studies  # one study per variant
        trials = storage.get_all_trials(study._study_id, deepcopy=False)
        return sorted((t.number, t.state.name) for t in trials)
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return list(conn.execute("SELECT number, state FROM trials ORDER BY number"))
    except sqlite3.OperationalError as exc:
        if "no such table: trials" in str(exc):  # created, the schema not written yet
            return []
        raise


LEARNED_PROBES = (
    ("Delicious cookies, we love them.", "great"),
    ("Stale crackers, awful and bitter.", "other"),
)
"""Reviews (not in the smoke data) with the cue words of the smoke data, and their labels."""

LEARNED_SCORE = 0.7
"""The least score a model that learned the smoke data gives each probe's label (one trained
with the default smoke settings gives ~0.85; the backbone with an untrained head ~0.5, on
the right or the wrong side)."""


def assert_model_classifies(model: Path, *, learned: bool = False) -> None:
    """The exported smoke model loads in `transformers.pipeline` and scores a review under
    both labels (great, other), the scores a distribution. With ``learned`` (a model trained
    long enough to learn the smoke data: the default smoke settings reach ~0.85 test accuracy)
    it must also give each of ``LEARNED_PROBES`` its label with a score of ``LEARNED_SCORE`` or
    more; leave it false only for a model that cannot have learned (one epoch, a tiny
    learning rate, a handful of rows)."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(model), top_k=None)
    texts = ["Fresh and tasty tea.", *(text for text, _ in LEARNED_PROBES)]
    results = cast("list[list[dict[str, Any]]]", classify(texts))
    answers = [{str(s["label"]): float(s["score"]) for s in scores} for scores in results]
    first = answers[0]
    assert set(first) == {"great", "other"}, first
    assert abs(sum(first.values()) - 1.0) < 1e-4 and all(0 <= v <= 1 for v in first.values())
    if learned:
        wrong = [
            f"{text!r} -> {scores}"
            for (text, label), scores in zip(LEARNED_PROBES, answers[1:], strict=True)
            if scores[label] < LEARNED_SCORE
        ]
        assert not wrong, (
            f"{model} has not learned the smoke data (a score under {LEARNED_SCORE} for the "
            f"label of {', '.join(f'{t!r}: {label}' for t, label in LEARNED_PROBES)}): "
            + "; ".join(wrong)
        )
