"""``ray-pipeline report``: the leaderboard, Optuna plots per variant, and the selection's
reasoning, as ``outputs/<experiment>/report/index.html``. ``status`` prints the same leaderboard.

report/
  index.html          leaderboard, selection reasoning, final model, links to every plot
  leaderboard.json
  plots/<variant>_<plot>.png   matplotlib (optuna.visualization.matplotlib)
  plots/<variant>_<plot>.html  interactive plotly (one shared plotly.min.js, works offline)
"""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ray_pipeline.artifacts import read_json, write_text_atomic
from ray_pipeline.benchmark.scope import assess
from ray_pipeline.final.results import FinalMetrics
from ray_pipeline.hpo.results import read_hpo
from ray_pipeline.hpo.study import study_storage
from ray_pipeline.paths import OutputsLayout
from ray_pipeline.schema import PipelineConfig
from ray_pipeline.selection import SelectionResult
from ray_pipeline.variants import Variant, experiment_variants

PLOTS = {
    "history": "plot_optimization_history",
    "importances": "plot_param_importances",
    "parallel": "plot_parallel_coordinate",
}
"""File stem -> the function of that name in optuna.visualization (and its .matplotlib)."""


class LeaderRow(BaseModel):
    """One HPO variant's best trial, as the leaderboard shows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: str
    variant: str
    status: str
    trials: str
    """finished / num_samples"""
    best_trial: int | None
    metric: str
    objective_mean: float | None
    objective_std: float | None
    p95_ms: float | None
    """At selection.latency_batch_size, when benchmarked."""
    parameters: int | None
    size_mb: float | None
    selection: str
    """``winner``, ``rank N``, or ``-``."""


def _selection(config: PipelineConfig) -> SelectionResult | None:
    path = OutputsLayout.of(config).selection_file
    return read_json(path, SelectionResult) if path.is_file() else None


def leaderboard(config: PipelineConfig) -> list[LeaderRow]:
    """Every HPO variant of every configured backbone, best first (unfinished ones last)."""
    selection = _selection(config)
    ranks = {s.candidate.variant: s.rank for s in selection.candidates} if selection else {}
    batch = config.selection.latency_batch_size
    rows = []
    for variant in experiment_variants(config, "hpo"):
        hpo = read_hpo(variant.files)
        best = hpo.best if hpo else None
        bench = None  # shown only when it measured this row's trial with today's settings
        if hpo is not None and best is not None:
            bench = assess(variant, hpo, config.benchmark.benchmarking).current
        timing = bench.at_batch(batch) if bench else None
        rank = ranks.get(variant.name)
        rows.append(
            LeaderRow(
                backbone=variant.record.backbone,
                variant=variant.name,
                status=variant.record.status,
                trials=f"{hpo.finished}/{hpo.num_samples}" if hpo else "-",
                best_trial=best.number if best else None,
                metric=hpo.metric if hpo else config.hpo.objective.metric,
                objective_mean=best.objective_mean if best else None,
                objective_std=best.objective_std if best else None,
                p95_ms=timing.p95_ms if timing else None,
                parameters=bench.parameters if bench else None,
                size_mb=bench.size_mb if bench else None,
                selection="-" if rank is None else "winner" if rank == 1 else f"rank {rank}",
            )
        )
    sign = -1.0 if config.hpo.objective.direction == "maximize" else 1.0
    return sorted(
        rows,
        key=lambda r: (r.objective_mean is None, sign * (r.objective_mean or 0.0), r.variant),
    )


def _cells(row: LeaderRow) -> list[str]:
    objective = "-"
    if row.objective_mean is not None:
        objective = f"{row.objective_mean:.4f} ± {row.objective_std or 0.0:.4f}"
    return [
        row.backbone,
        row.variant,
        row.status,
        row.trials,
        "-" if row.best_trial is None else str(row.best_trial),
        objective,
        "-" if row.p95_ms is None else f"{row.p95_ms:.1f}",
        "-" if row.parameters is None else f"{row.parameters / 1e6:.2f}M",
        "-" if row.size_mb is None else f"{row.size_mb:.1f}",
        row.selection,
    ]


def _header(rows: list[LeaderRow], batch: int) -> list[str]:
    metric = rows[0].metric if rows else "objective"
    return [
        "backbone",
        "variant",
        "status",
        "trials",
        "best",
        f"{metric} (mean ± std)",
        f"p95 ms @{batch}",
        "params",
        "MB",
        "selection",
    ]


def format_leaderboard(rows: list[LeaderRow], batch: int) -> str:
    """The leaderboard as a terminal table."""
    if not rows:
        return "leaderboard: no HPO variants yet"
    table = [_header(rows, batch)] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in table]
    return "\n".join(["leaderboard:", *(line.rstrip() for line in lines)])


def _plots(config: PipelineConfig, variant: Variant, layout: OutputsLayout) -> dict[str, str]:
    """Each plot's PNG and HTML for one variant's study; a plot Optuna cannot draw (too few
    trials, one parameter) is skipped with the reason. Returns plot -> links or reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization as plotly_vis
    import optuna.visualization.matplotlib as mpl_vis

    storage = study_storage(variant.files, variant.name, config.hpo.checkpoint)
    study = optuna.load_study(study_name=variant.name, storage=storage)
    done: dict[str, str] = {}
    for stem, function in PLOTS.items():
        png, page = (layout.report_plot(variant.name, stem, html) for html in (False, True))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks the matplotlib backend experimental
                axes: Any = getattr(mpl_vis, function)(study)
                figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
                figure.savefig(png, dpi=100, bbox_inches="tight")
                plt.close(figure)
                fig: Any = getattr(plotly_vis, function)(study)
                fig.write_html(page, include_plotlyjs="directory")
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            done[stem] = f"skipped: {exc}"
            continue
        png_link, page_link = (p.relative_to(layout.report_dir).as_posix() for p in (png, page))
        done[stem] = (
            f'<a href="{png_link}"><img src="{png_link}" height="220"></a> '
            f'<a href="{page_link}">interactive</a>'
        )
    return done


def write_report(config: PipelineConfig) -> Path:
    """Write the report directory; returns its index.html."""
    layout = OutputsLayout.of(config)
    plots_dir = layout.report_plots
    plots_dir.mkdir(parents=True, exist_ok=True)
    rows = leaderboard(config)
    batch = config.selection.latency_batch_size
    write_text_atomic(
        layout.leaderboard_file,
        "[\n" + ",\n".join(r.model_dump_json() for r in rows) + "\n]\n",
    )
    sections = [_html_table(_header(rows, batch), [_cells(r) for r in rows])]
    selection = _selection(config)
    sections.append(
        "<h2>Selection</h2><p>"
        + html.escape(selection.reasoning if selection else "not run yet (`ray-pipeline select`)")
        + "</p>"
    )
    sections.append(_final_section(config))
    for variant in experiment_variants(config, "hpo"):
        if not variant.files.hpo_result.is_file():
            continue
        print(f"report: plotting {variant.name}")
        plots = _plots(config, variant, layout)
        items = "".join(f"<li>{stem}: {cell}</li>" for stem, cell in plots.items())
        sections.append(f"<h2>{html.escape(variant.name)}</h2><ul>{items}</ul>")
    index = layout.report_index
    title = f"ray_pipeline report: {html.escape(config.experiment.name)}"
    write_text_atomic(
        index,
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;"
        "border-bottom:1px solid #ddd;text-align:left}</style></head><body>"
        f"<h1>{title}</h1><h2>Leaderboard</h2>{''.join(sections)}</body></html>\n",
    )
    print(format_leaderboard(rows, batch))
    print(f"report: {index}")
    return index


def _final_section(config: PipelineConfig) -> str:
    found = [v.files for v in experiment_variants(config, "final") if v.files.metrics.is_file()]
    if not found:
        return "<h2>Final model</h2><p>not trained yet (`ray-pipeline train`)</p>"
    items = []
    for files in found:
        metrics = read_json(files.metrics, FinalMetrics)
        scores = ", ".join(f"{k} {v:.4f}" for k, v in metrics.test_metrics.items())
        items.append(
            f"<li>{html.escape(metrics.variant)} (from {html.escape(metrics.source.trial.label)}"
            f"): test {html.escape(scores)}; model: <code>{html.escape(str(files.model))}</code>"
            "</li>"
        )
    return "<h2>Final model</h2><ul>" + "".join(items) + "</ul>"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"
