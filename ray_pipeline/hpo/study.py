"""The Optuna study stored in a variant: storage, state counts, and crash clean-up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray_pipeline.direction import Direction
from ray_pipeline.errors import ConfigError, PipelineError
from ray_pipeline.paths import VariantFiles
from ray_pipeline.schema import StudyCheckpoint

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage

FINISHED_STATES = ("COMPLETE", "PRUNED")

TRIAL_CAP = "ray_pipeline.num_samples"
"""Study user attribute: the ``hpo.num_samples`` of the run searching it. The searcher stops
launching trials once the study's finished trials and its own running ones reach it, also in a
Tune round restored from a run that wanted more (Tune restores the round's own trial count)."""


def study_storage(files: VariantFiles, variant: str, checkpoint: StudyCheckpoint) -> BaseStorage:
    """The variant's Optuna storage: SQLite by default, Journal storage for shared filesystems."""
    import optuna

    journal = checkpoint.storage_backend == "journal"
    path = files.study_file(checkpoint.storage_path, variant, journal)
    path.parent.mkdir(parents=True, exist_ok=True)
    if journal:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(f"sqlite:///{path}")


def open_study(
    files: VariantFiles,
    variant: str,
    checkpoint: StudyCheckpoint,
    direction: Direction,
    latency: bool = False,
) -> tuple[BaseStorage, optuna.Study]:
    """The variant's storage and study (``study_storage``, ``load_study``). A study file that
    cannot be read (corrupt, not a study, of another Optuna schema) is a PipelineError naming
    the file and the ways out, before anything is written; the variant's status is untouched."""
    journal = checkpoint.storage_backend == "journal"
    path = files.study_file(checkpoint.storage_path, variant, journal)
    try:
        storage = study_storage(files, variant, checkpoint)
        storage.get_all_studies()  # reads the whole file before anything is written to it
        return storage, load_study(storage, variant, direction, latency)
    except Exception as error:  # SQLAlchemy's, Optuna's and the journal's errors alike
        raise PipelineError(
            f"{variant}: its Optuna study {path} cannot be read ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else 'no message'}); restore the "
            "file from a backup, or start a new variant with hpo.run.mode=force_new (the "
            "trials in this variant's hpo.json stay where they are)"
        ) from error


def check_study_holds(
    files: VariantFiles, variant: str, checkpoint: StudyCheckpoint, finished: int
) -> None:
    """ConfigError (before anything is written) when ``variant``'s ``hpo.json`` records
    ``finished`` trials but the study ``hpo.checkpoint`` points at is missing or holds none of
    them (lost, or stored with another backend or path): the run would start the search over
    and rewrite ``hpo.json`` without them. A study that cannot be read is left to
    ``open_study``."""
    journal = checkpoint.storage_backend == "journal"
    path = files.study_file(checkpoint.storage_path, variant, journal)
    if path.is_file() and path.stat().st_size > 0:
        try:
            held = _trials_in(study_storage(files, variant, checkpoint), variant)
        except Exception:  # unreadable: open_study names the file when the stage runs
            return
        if held > 0:
            return
    other = files.study_file(checkpoint.storage_path, variant, not journal)
    elsewhere = (
        f"a study with the other backend is at {other} (hpo.checkpoint.storage_backend="
        f"{'sqlite' if journal else 'journal'}); "
        if other.is_file()
        else ""
    )
    state = "holds none of them" if path.is_file() else "is missing"
    raise ConfigError.at(
        "hpo.checkpoint",
        f"{variant}: its hpo.json records {finished} finished trial(s), but its Optuna study "
        f"{path} {state}; {elsewhere}point hpo.checkpoint.storage_backend and storage_path at "
        "the study that holds them, or start a new variant with hpo.run.mode=force_new (the "
        "finished trials are never rerun or dropped)",
    )


def _trials_in(storage: BaseStorage, name: str) -> int:
    """The number of trials of study ``name`` in ``storage`` (0 when it has no such study)."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:  # Optuna's "no such study"
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def load_study(
    storage: BaseStorage,
    name: str,
    direction: Direction,
    latency: bool = False,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create or open the study ``name``: one objective, or with ``latency`` two (the metric,
    then latency, minimised); ``sampler`` and ``pruner`` as Optuna's defaults when None."""
    import optuna
    from optuna.study import StudyDirection

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first = StudyDirection[direction.name]
    directions = [first, StudyDirection.MINIMIZE] if latency else [first]
    return optuna.create_study(
        storage=storage,
        study_name=name,
        directions=directions,
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
    )


def count_finished(study: optuna.Study) -> int:
    """Trials that ran to the end or were stopped early by the scheduler."""
    return sum(t.state.name in FINISHED_STATES for t in study.get_trials(deepcopy=False))


def fail_running(study: optuna.Study) -> list[int]:
    """Mark trials left RUNNING (their driver is gone) as FAIL; return their numbers."""
    import optuna

    stale = [t.number for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
    for number in stale:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    return stale


def best_so_far(study: optuna.Study) -> tuple[float, int] | None:
    """The best finished trial's objective and number (None: none yet, or two objectives)."""
    complete = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE" and t.values is not None and len(t.values) == 1
    ]
    if not complete or len(study.directions) != 1:
        return None
    best = study_direction(study).best(complete, key=lambda t: float(t.values[0]))
    assert best is not None
    return float(best.values[0]), best.number


def study_direction(study: optuna.Study) -> Direction:
    """The direction of the study's first objective."""
    return Direction(study.directions[0].name.lower())
