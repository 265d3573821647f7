"""The report's sections on the search: accuracy against latency across variants, and per
HPO variant its trials, fold spread, learning curves and Optuna's plots."""

from __future__ import annotations

from ray_pipeline.benchmark.scope import assess
from ray_pipeline.hpo.keep import pareto_front
from ray_pipeline.hpo.results import HpoResult, TrialRecord
from ray_pipeline.hpo.study import study_storage
from ray_pipeline.report import figures
from ray_pipeline.report.figures import LatencyPoint
from ray_pipeline.report.page import figure, heading, note, params, table, text
from ray_pipeline.schema import PipelineConfig
from ray_pipeline.variants import Variant

Winner = tuple[str, int] | None
"""The selected trial as (variant, number), if selection ran."""


def benchmark_points(
    config: PipelineConfig, searched: list[tuple[Variant, HpoResult]]
) -> list[LatencyPoint]:
    """Every trial with a current benchmark (each variant's best and the rest of its Pareto
    front) at ``selection.latency_batch_size``; the front is over all of them."""
    batch, settings = config.selection.latency_batch_size, config.benchmark.benchmarking
    measured: list[tuple[TrialRecord, float]] = []
    for variant, hpo in searched:
        if hpo.best is None:
            continue
        by_number = {t.number: t for t in hpo.trials}
        for number in dict.fromkeys([hpo.best.number, *hpo.pareto]):
            bench = assess(variant, hpo, settings, by_number[number]).current
            timing = bench.at_batch(batch) if bench else None
            if timing is not None and by_number[number].objective_mean is not None:
                measured.append((by_number[number], timing.p95_ms))
    # pareto_front compares trials by number: renumber them, as they come from several variants
    renumbered = [
        t.model_copy(update={"number": i, "latency_ms": ms}) for i, (t, ms) in enumerate(measured)
    ]
    front = set(pareto_front(renumbered, config.hpo.objective.direction))
    return [
        LatencyPoint(
            t.variant, t.number, t.objective_mean or 0.0, ms, "all" if i in front else None
        )
        for i, (t, ms) in enumerate(measured)
    ]


def objective_points(searched: list[tuple[Variant, HpoResult]]) -> list[LatencyPoint]:
    """Every complete trial timed by the HPO latency objective; each variant's own Pareto
    front as ``hpo.json`` records it."""
    return [
        LatencyPoint(
            t.variant,
            t.number,
            t.objective_mean,
            t.latency_ms,
            t.variant if t.number in hpo.pareto else None,
        )
        for _, hpo in searched
        for t in hpo.trials
        if t.state == "COMPLETE" and t.objective_mean is not None and t.latency_ms is not None
    ]


def tradeoff_section(
    config: PipelineConfig, searched: list[tuple[Variant, HpoResult]], winner: Winner
) -> str:
    """Objective against latency: the benchmark's timings, and the HPO latency objective's."""
    metric, batch = config.hpo.objective.metric, config.selection.latency_batch_size
    parts = []
    benchmarked = benchmark_points(config, searched)
    if benchmarked:
        drawn = figures.tradeoff(
            benchmarked, winner, metric, f"benchmark p95 latency (ms) at batch {batch}"
        )
        parts.append(
            figure(
                "tradeoff-benchmark",
                figures.svg(drawn),
                f"Cross-validated {metric} (mean over folds) against the benchmark's p95 latency "
                f"per batch of {batch}, for every benchmarked trial. Ringed and joined: the "
                "Pareto front (no other benchmarked trial is both better and faster). Star: "
                "the trial the selection chose.",
            )
        )
    timed = objective_points(searched)
    if timed:
        drawn = figures.tradeoff(
            timed, winner, metric, "HPO latency objective: p95 (ms) at batch 1"
        )
        parts.append(
            figure(
                "tradeoff-hpo",
                figures.svg(drawn),
                f"Every complete trial of the multi-objective studies: {metric} against the "
                "latency HPO measured after fold 0 (batch 1, on the trial's own device). Ringed "
                "and joined: each variant's Pareto front as hpo.json records it. Star: the "
                "selected trial.",
            )
        )
    if not parts:
        return note(
            "No trial has a latency to plot: none has a current benchmark (run `ray-pipeline "
            "benchmark`) or a latency from HPO (hpo.objective.latency)."
        )
    return "".join(parts)


def variant_section(config: PipelineConfig, variant: Variant, hpo: HpoResult) -> str:
    """One HPO variant: its trials, fold spread, learning curves and Optuna's plots."""
    parts = [_summary(hpo), _trial_table(hpo)]
    name = variant.name
    parts.append(heading("Fold spread"))
    if any(t.folds for t in hpo.trials):
        parts.append(
            figure(
                f"folds-{name}",
                figures.svg(figures.fold_spread(hpo)),
                f"{hpo.metric} of each fold of each trial (dots) and their mean ± standard "
                "deviation (bars); the variant's best trial shaded.",
            )
        )
    else:
        parts.append(note("No trial has finished a fold yet."))
    parts.append(heading("Learning curves"))
    curves = figures.learning_curves(hpo)
    if curves is None:
        parts.append(note("No per-epoch history recorded for this variant's folds."))
    else:
        parts.append(
            figure(
                f"curves-{name}",
                figures.svg(curves),
                f"Training loss (left) and validation {hpo.metric} (right) after each epoch, "
                "one line per fold, coloured by trial.",
            )
        )
    parts.append(_study_plots(config, variant, hpo.metric))
    return "".join(parts)


def _summary(hpo: HpoResult) -> str:
    best = hpo.best
    scored = (
        "one fit each, scored on the validation split"
        if hpo.evaluation == "holdout"
        else f"{hpo.k_folds} folds each"
    )
    line = f"{hpo.finished} of {hpo.num_samples} trials finished, {scored}; "
    line += f"{hpo.direction} {hpo.metric}"
    if best is not None and best.objective_mean is not None:
        line += f"; best: trial {best.number} ({best.objective_mean:.4f})"
    if hpo.pareto:
        line += f"; Pareto front (metric vs latency): trials {', '.join(map(str, hpo.pareto))}"
    if hpo.stop_reason:
        line += f"; stopped early: {hpo.stop_reason}"
    return f"<p>{text(line)}.</p>"


def _trial_table(hpo: HpoResult) -> str:
    best = hpo.best.number if hpo.best else None
    rows = [
        [
            str(t.number),
            t.state,
            "-"
            if t.objective_mean is None
            else f"{t.objective_mean:.4f} ± {t.objective_std or 0.0:.4f}",
            "-" if t.latency_ms is None else f"{t.latency_ms:.2f}",
            params(t.params),
        ]
        for t in hpo.trials
    ]
    header = ["trial", "state", f"{hpo.metric} (mean ± std)", "HPO latency ms", "parameters"]
    marked = [t.number == best for t in hpo.trials]
    return table(header, rows, marked=marked, ident=f"trials-{hpo.variant}")


PLOT_TITLES = {
    "history": (
        "Optimisation history",
        "Optuna: each trial's {metric} in the order the trials started (and, for a "
        "single-objective study, the best so far).",
    ),
    "parallel": (
        "Parallel coordinates",
        "Optuna: each trial's hyperparameters (axes) and its {metric} (colour).",
    ),
    "importance": (
        "Parameter importance",
        "Optuna (fANOVA): how much of the variation in {metric} each hyperparameter explains.",
    ),
}


def _study_plots(config: PipelineConfig, variant: Variant, metric: str) -> str:
    import optuna

    checkpoint = config.hpo.checkpoint
    journal = checkpoint.storage_backend == "journal"
    path = variant.files.study_file(checkpoint.storage_path, variant.name, journal)
    if not path.is_file():
        return heading("Optuna study") + note(f"No Optuna study at {path}.")
    try:
        storage = study_storage(variant.files, variant.name, checkpoint)
        study = optuna.load_study(study_name=variant.name, storage=storage)
    except Exception as error:  # a corrupt or foreign file: the report shows the rest
        return heading("Optuna study") + note(
            f"The Optuna study at {path} cannot be read ({type(error).__name__})."
        )
    parts = []
    for name, drawn in figures.study_figures(study, metric).items():
        title, caption = PLOT_TITLES[name]
        parts.append(heading(title))
        if drawn.svg is None:
            parts.append(note(drawn.why_not or ""))
        else:
            parts.append(figure(f"{name}-{variant.name}", drawn.svg, caption.format(metric=metric)))
    return "".join(parts)
