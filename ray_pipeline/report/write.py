"""``write_report``: every section of ``report/index.html`` from the records on disk, and
``leaderboard.json``."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from ray_pipeline.artifacts import read_json, write_text_atomic
from ray_pipeline.final.results import FinalMetrics, Lineage
from ray_pipeline.hpo.results import read_hpo
from ray_pipeline.paths import OutputsLayout
from ray_pipeline.report import figures
from ray_pipeline.report.leaderboard import (
    LeaderRow,
    format_leaderboard,
    leaderboard,
    leaderboard_cells,
    leaderboard_header,
    read_selection,
)
from ray_pipeline.report.page import (
    Section,
    document,
    figure,
    heading,
    note,
    params,
    table,
    text,
)
from ray_pipeline.report.trials import tradeoff_section, variant_section
from ray_pipeline.schema import PipelineConfig
from ray_pipeline.selection import SelectionResult
from ray_pipeline.variants import Variant, experiment_variants


def write_report(config: PipelineConfig) -> Path:
    """Write ``report/index.html`` and ``report/leaderboard.json``; returns the page."""
    layout = OutputsLayout.of(config)
    layout.report_dir.mkdir(parents=True, exist_ok=True)
    rows = leaderboard(config)
    batch = config.selection.latency_batch_size
    write_text_atomic(
        layout.leaderboard_file,
        "[\n" + ",\n".join(r.model_dump_json() for r in rows) + "\n]\n",
    )
    selection = read_selection(config)
    winner = (selection.winner.variant, selection.winner.trial.number) if selection else None
    searched = [(v, hpo) for v in experiment_variants(config, "hpo") if (hpo := read_hpo(v.files))]
    sections = [
        Section("leaderboard", "Leaderboard", _leaderboard(rows, batch)),
        Section("selection", "Selection", _selection(selection)),
        Section("final", "Final model", _final(config)),
        Section("tradeoff", "Accuracy vs latency", tradeoff_section(config, searched, winner)),
    ]
    for variant, hpo in searched:
        print(f"report: plotting {variant.name}")
        body = variant_section(config, variant, hpo)
        sections.append(Section(f"variant-{variant.name}", f"HPO variant {variant.name}", body))
    written = datetime.now(timezone.utc).isoformat(timespec="seconds")
    page = document(
        f"ray_pipeline report: {config.experiment.name}",
        f"Written {written} from the records under {layout.root}.",
        sections,
    )
    write_text_atomic(layout.report_index, page)
    print(format_leaderboard(rows, batch))
    print(f"report: {layout.report_index}")
    return layout.report_index


def _leaderboard(rows: list[LeaderRow], batch: int) -> str:
    if not rows:
        return note("No HPO variant yet: run `ray-pipeline hpo`.")
    return (
        "<p>Each HPO variant's best trial, best first; the selected one highlighted. "
        "Also in <code>leaderboard.json</code>.</p>"
        + table(
            leaderboard_header(rows, batch),
            [leaderboard_cells(r) for r in rows],
            marked=[r.selection == "winner" for r in rows],
            ident="leaderboard-table",
        )
    )


def _selection(selection: SelectionResult | None) -> str:
    if selection is None:
        return note("Selection has not run yet (`ray-pipeline select`).")
    rules = selection.rules
    header = [
        "rank",
        "trial",
        "backbone",
        f"{rules.metric} (mean ± std)",
        f"p95 ms @{rules.latency_batch_size}",
        "params",
        "score",
        "verdict",
    ]
    rows = [
        [
            str(s.rank),
            s.candidate.trial.label,
            s.candidate.trial.backbone,
            f"{s.candidate.objective:.4f} ± {s.candidate.objective_std:.4f}",
            f"{s.candidate.latency_ms:.2f}",
            f"{s.candidate.parameters / 1e6:.2f}M",
            "-" if s.score is None else f"{s.score:.4f}",
            s.verdict,
        ]
        for s in selection.candidates
    ]
    marked = [s.rank == 1 for s in selection.candidates]
    return f"<p>{text(selection.reasoning)}</p>" + table(
        header, rows, marked=marked, ident="candidates"
    )


def _final(config: PipelineConfig) -> str:
    found = [v for v in experiment_variants(config, "final") if v.files.metrics.is_file()]
    if not found:
        return note("No final model yet (`ray-pipeline train`).")
    return "".join(_final_variant(v) for v in found)


def _final_variant(variant: Variant) -> str:
    files = variant.files
    metrics = read_json(files.metrics, FinalMetrics)
    name = metrics.variant
    source = metrics.source
    parts = [
        heading(name),
        f"<p>Refit of {text(source.trial.label)} (chosen by {source.chosen_by}) on "
        f"{metrics.train_examples} training examples, {len(metrics.epochs)} epoch(s) in "
        f"{metrics.seconds:.0f} s; evaluated on {metrics.test_examples} test examples. Model: "
        f"<code>{text(str(files.model))}</code></p>",
        _test_metrics(metrics),
    ]
    ner = metrics.task == "token_classification"
    parts.append(heading(f"Per {'entity type' if ner else 'class'}", level=4))
    if metrics.per_class:
        rows = [
            [label, f"{s.precision:.4f}", f"{s.recall:.4f}", f"{s.f1:.4f}", str(s.support)]
            for label, s in metrics.per_class.items()
        ]
        header = ["entity type" if ner else "class", "precision", "recall", "F1", "support"]
        parts.append(table(header, rows, ident=f"per-class-{name}"))
    else:
        parts.append(note("No per-class scores recorded in metrics.json."))
    parts.append(heading("Confusion matrix", level=4))
    if metrics.confusion is not None:
        svg = figures.svg(figures.confusion(metrics.confusion))
        caption = (
            f"Test examples of each true label (rows) predicted as each label (columns), {name}."
        )
        parts.append(figure(f"confusion-{name}", svg, caption))
    elif ner:
        parts.append(note("No confusion matrix for token classification (see per entity type)."))
    else:
        parts.append(note("No confusion matrix recorded in metrics.json."))
    parts.append(heading("Lineage", level=4))
    if files.lineage.is_file():
        parts.append(_lineage(read_json(files.lineage, Lineage)))
    else:
        parts.append(note(f"No lineage.json at {files.lineage}."))
    return "".join(parts)


def _test_metrics(metrics: FinalMetrics) -> str:
    rows = [[key, f"{value:.4f}"] for key, value in metrics.test_metrics.items()]
    if metrics.majority_rate is not None:
        what = "token accuracy" if metrics.task == "token_classification" else "accuracy"
        label = f"baseline: always {metrics.majority_label!r} ({what})"
        rows.append([label, f"{metrics.majority_rate:.4f}"])
    return table(["test metric", "value"], rows, ident=f"test-metrics-{metrics.variant}")


def _lineage(lineage: Lineage) -> str:
    trial = lineage.source.trial
    runs = ", ".join(f"{stage}: {run or '-'}" for stage, run in lineage.mlflow.items())
    rows = [
        ["source trial", f"{trial.label} ({trial.backbone}), chosen by {lineage.source.chosen_by}"],
        ["source parameters", params(trial.params)],
        ["final key", lineage.final_key_hash],
        ["data fingerprint", lineage.data_fingerprint],
        ["labels", ", ".join(lineage.labels)],
        ["MLflow runs", runs or "-"],
        ["packages", ", ".join(f"{k} {v}" for k, v in sorted(lineage.packages.items()))],
        ["created", lineage.created_at],
    ]
    if lineage.refit is not None:
        refit = lineage.refit
        rows.insert(
            2,
            [
                "refit",
                f"{refit.workers} worker(s) on {refit.device}, {refit.backend}, effective "
                f"batch {refit.effective_batch_size}",
            ],
        )
    return table(["lineage", ""], rows, ident=f"lineage-{lineage.final_variant}")
