"""``ray-pipeline status``: what exists on disk for an experiment, per stage and backbone."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from pydantic import BaseModel, ConfigDict

from ray_pipeline.identity import same_study, study_key
from ray_pipeline.lease import holder_alive, read_lease
from ray_pipeline.naming import VariantStage
from ray_pipeline.paths import OutputsLayout
from ray_pipeline.report import LeaderRow, format_leaderboard, leaderboard
from ray_pipeline.schema import PipelineConfig
from ray_pipeline.variants import backbone_variants

_HASH_SHOWN = 12


class VariantStatusRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    stage: VariantStage
    backbone: str
    variant: str
    status: str
    study_key_hash: str
    matches_config: bool
    created_at: str
    path: str
    has_benchmark: bool
    held_by: str | None = None
    """The live run holding the variant's lease (``pid N on host, since T``), if any."""


class StatusReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    experiment: str
    outputs: str
    variants: list[VariantStatusRow]
    selection: str | None
    leaderboard: list[LeaderRow]
    latency_batch_size: int


def collect_status(config: PipelineConfig) -> StatusReport:
    """Read every variant of every backbone and stage; writes nothing."""
    layout = OutputsLayout.of(config)
    rows = []
    for backbone in config.model.backbones:
        key = study_key(config, backbone)
        for stage in get_args(VariantStage):
            for variant in backbone_variants(config, stage, backbone.name):
                rec = variant.record
                rows.append(
                    VariantStatusRow(
                        stage=stage,
                        backbone=backbone.name,
                        variant=rec.name,
                        status=rec.status,
                        study_key_hash=rec.study_key_hash,
                        matches_config=stage != "hpo" or same_study(rec.study_key, key),
                        created_at=rec.created_at,
                        path=str(variant.path),
                        has_benchmark=variant.files.benchmark.is_file(),
                        held_by=_holder(variant.files.lease),
                    )
                )
    selection = layout.selection_file
    return StatusReport(
        experiment=config.experiment.name,
        outputs=str(layout.root),
        variants=rows,
        selection=str(selection) if selection.is_file() else None,
        leaderboard=leaderboard(config),
        latency_batch_size=config.selection.latency_batch_size,
    )


def _holder(path: Path) -> str | None:
    held = read_lease(path)
    return held.describe() if held is not None and holder_alive(held) else None


def format_status(report: StatusReport) -> str:
    """A terminal table of the report."""
    lines = [f"experiment {report.experiment}  ({report.outputs})"]
    if not report.variants:
        lines.append("no variants yet: run `ray-pipeline hpo --config ...` to start one")
    else:
        header = ("stage", "backbone", "variant", "status", "study_key_hash", "benchmark")
        table = [header] + [
            (
                r.stage,
                r.backbone,
                r.variant,
                r.status + (f" (held by {r.held_by})" if r.held_by else ""),
                r.study_key_hash[:_HASH_SHOWN] + ("" if r.matches_config else " (config changed)"),
                "yes" if r.has_benchmark else "-",
            )
            for r in report.variants
        ]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines += [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in table
        ]
    lines.append(f"selection: {report.selection or '-'}")
    if report.leaderboard:
        lines.append(format_leaderboard(report.leaderboard, report.latency_batch_size))
    return "\n".join(lines)
