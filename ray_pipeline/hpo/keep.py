"""What a finished HPO variant keeps: its best trial's best-fold model in ``best/``, the other
Pareto trials' models in ``pareto/trial_<n>`` (the benchmark measures them), and nothing else
when ``save_only_best``; and which trials make the Pareto front."""

from __future__ import annotations

from pathlib import Path

from ray_pipeline.direction import Direction
from ray_pipeline.hpo.results import HpoResult, TrialRecord
from ray_pipeline.layout_names import CHECKPOINT_MODEL
from ray_pipeline.storage import WorkerStorage, children, copy, delete, is_dir, is_file, join
from ray_pipeline.variants import Variant


def pareto_front(trials: list[TrialRecord], direction: Direction) -> list[int]:
    """The numbers of the ``trials`` (complete, with an objective and a latency) that no other
    is at least as good as on both objectives and better on one."""
    points = {
        t.number: (direction.oriented(t.objective_mean), t.latency_ms)
        for t in trials
        if t.objective_mean is not None and t.latency_ms is not None
    }

    def dominated(a: tuple[float, float]) -> bool:
        return any(b[0] >= a[0] and b[1] <= a[1] and b != a for b in points.values())

    return sorted(n for n, point in points.items() if not dominated(point))


def keep_best(
    result: HpoResult, variant: Variant, only_best: bool, where: WorkerStorage
) -> HpoResult:
    """Copy the best trial's best-fold model (in its last checkpoint, a place) to
    ``<variant>/best`` on the driver's disk, and each other Pareto trial's to
    ``<variant>/pareto/trial_<n>`` (for the benchmark, which shares them with its actors).
    With ``only_best``, drop every other checkpoint."""
    files = variant.files
    best = result.best
    targets = {number: files.pareto_model(number) for number in result.pareto}
    if best is not None:
        targets[best.number] = files.best
    kept_dirs = {str(p) for p in targets.values()}
    by_number = {t.number: t for t in result.trials}
    # Pareto trials first: one that was the best has its model in best/, which the best
    # replaces.
    for number in sorted(targets, key=lambda n: best is not None and n == best.number):
        _copy_model(by_number[number].checkpoint, targets[number])
    if only_best:
        owned = {str(files.path), where.place(files.path)}
        for trial in result.trials:
            place = trial.checkpoint
            if place is None or place in kept_dirs:
                continue
            if files.owns(place) or any(place.startswith(f"{p}/") for p in owned):
                delete(place)  # never a place outside this variant (another tree's)
        for train in {str(files.train_dir), where.place(files.train_dir)}:
            delete(train)  # the kept models: best/, pareto/
        pareto_dir = files.pareto_model(0).parent
        for name in children(pareto_dir, "trial_"):
            if str(pareto_dir / name) not in kept_dirs:  # off the front since
                delete(join(pareto_dir, name))

    def kept(trial: TrialRecord) -> str | None:
        target = targets.get(trial.number)
        if target is not None and target.is_dir():
            return str(target)
        return None if only_best else trial.checkpoint

    trials = [t.model_copy(update={"checkpoint": kept(t)}) for t in result.trials]
    best_record = next((t for t in trials if best is not None and t.number == best.number), None)
    return result.model_copy(
        update={
            "trials": trials,
            "best": best_record,
            "best_checkpoint": str(files.best) if files.best.is_dir() else None,
        }
    )


def _copy_model(checkpoint: str | None, target: Path) -> None:
    """Put the model of a trial's ``checkpoint`` (a trial checkpoint's ``model/``, or a model
    directory kept earlier: ``best/``, ``pareto/trial_<n>``; a place) at ``target``,
    atomically."""
    if checkpoint is None or checkpoint == str(target):
        return
    source = join(checkpoint, CHECKPOINT_MODEL)
    if not is_dir(source):
        source = checkpoint
    if not is_file(join(source, "config.json")):
        return
    copy(source, str(target))
