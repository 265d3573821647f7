"""The leaderboard: each HPO variant's best trial with its benchmark and its fate in the
selection. ``status`` prints it, the report shows it and writes ``leaderboard.json``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ray_pipeline.artifacts import read_json
from ray_pipeline.benchmark.scope import assess
from ray_pipeline.hpo.results import read_hpo
from ray_pipeline.paths import OutputsLayout
from ray_pipeline.schema import PipelineConfig
from ray_pipeline.selection import SelectionResult
from ray_pipeline.variants import experiment_variants


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


def read_selection(config: PipelineConfig) -> SelectionResult | None:
    """``selection/selection.json``, if written."""
    path = OutputsLayout.of(config).selection_file
    return read_json(path, SelectionResult) if path.is_file() else None


def leaderboard(config: PipelineConfig) -> list[LeaderRow]:
    """Every HPO variant of every configured backbone, best first (unfinished ones last)."""
    selection = read_selection(config)
    ranks: dict[str, int] = {}  # a variant's best rank (its Pareto trials are candidates too)
    for scored in selection.candidates if selection else []:
        variant_name = scored.candidate.variant
        ranks[variant_name] = min(scored.rank, ranks.get(variant_name, scored.rank))
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
    direction = config.hpo.objective.direction
    return sorted(
        rows,
        key=lambda r: (
            r.objective_mean is None,
            -direction.oriented(r.objective_mean or 0.0),
            r.variant,
        ),
    )


def leaderboard_cells(row: LeaderRow) -> list[str]:
    """One row's cells, as text (the terminal table and the report's)."""
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


def leaderboard_header(rows: list[LeaderRow], batch: int) -> list[str]:
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
    table = [leaderboard_header(rows, batch)] + [leaderboard_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in table]
    return "\n".join(["leaderboard:", *(line.rstrip() for line in lines)])
