"""The table of contents: which stages exist, in which order they run.

    hpo -> benchmark -> select -> final

A stage is a ``check`` (every input problem, before anything is written: exit 2) and a
``run`` that takes what ``check`` prepared. All requested stages are checked first; then the
resolved config is written and the stages run in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ray_pipeline.artifacts import write_text_atomic
from ray_pipeline.console import quiet_libraries
from ray_pipeline.errors import ConfigError
from ray_pipeline.loading import load_config
from ray_pipeline.models import check_dropout
from ray_pipeline.paths import OutputsLayout
from ray_pipeline.precision import check_config as check_precision
from ray_pipeline.schema import PipelineConfig
from ray_pipeline.storage import WorkerStorage


@dataclass(frozen=True)
class Stage:
    """A stage's two halves."""

    check: Callable[[PipelineConfig, Sequence[str]], Any]
    """Given the config and every stage of this run."""
    run: Callable[[PipelineConfig, Any], Any]
    needs_ray: bool = True


def _hpo() -> Stage:
    from ray_pipeline.hpo.stage import check_hpo, run_hpo

    return Stage(lambda config, _: check_hpo(config), run_hpo)


def _benchmark() -> Stage:
    from ray_pipeline.benchmark.stage import check_benchmark, run_benchmark

    return Stage(lambda config, _: check_benchmark(config), run_benchmark)


def _select() -> Stage:
    from ray_pipeline.selection import check_select, run_select

    return Stage(check_select, run_select, needs_ray=False)


def _final() -> Stage:
    from ray_pipeline.final.stage import check_final, run_final

    return Stage(check_final, run_final)


STAGE_ORDER: tuple[str, ...] = ("hpo", "benchmark", "select", "final")
STAGES: dict[str, Callable[[], Stage]] = {
    "hpo": _hpo,
    "benchmark": _benchmark,
    "select": _select,
    "final": _final,
}


def parse_stages(text: str) -> tuple[str, ...]:
    """``"hpo,select"`` -> the named stages in pipeline order; unknown names raise ConfigError."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in STAGE_ORDER]
    if unknown or not names:
        given = ", ".join(unknown) or "(none given)"
        msg = f"unknown stage(s) {given}; choose from {','.join(STAGE_ORDER)}"
        raise ConfigError.at("--stages", msg)
    return tuple(s for s in STAGE_ORDER if s in names)


def write_resolved_config(config: PipelineConfig) -> Path:
    """``<outputs>/<experiment>/config.resolved.yaml``: what this run actually used."""
    path = OutputsLayout.of(config).resolved_config
    write_text_atomic(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


def run(
    config: PipelineConfig | Path | str,
    stages: Sequence[str] = STAGE_ORDER,
    overrides: Sequence[str] = (),
) -> None:
    """Run ``stages`` (in pipeline order) of an experiment given as a config or a file path."""
    cfg = config if isinstance(config, PipelineConfig) else load_config(config, tuple(overrides))
    quiet_libraries()
    check_precision(cfg)
    check_dropout(cfg)
    ordered = parse_stages(",".join(stages))
    built = {name: STAGES[name]() for name in ordered}
    if any(stage.needs_ray for stage in built.values()):
        from ray_pipeline.cluster import check_shared_storage, ensure_ray

        ensure_ray(cfg.resources.address)
        nodes = check_shared_storage(WorkerStorage.of(cfg))
        from ray_pipeline.tracking import check_tracking_for_nodes

        check_tracking_for_nodes(cfg, nodes)
        shared = cfg.storage.uri is None  # else the study stays on the driver's own disk
        if nodes > 1 and shared and cfg.hpo.checkpoint.storage_backend == "sqlite":
            print(
                "warning: Optuna's SQLite study sits on shared storage, where file locking is "
                "unreliable; prefer hpo.checkpoint.storage_backend=journal (docs/cluster.md)"
            )
    prepared = {name: stage.check(cfg, ordered) for name, stage in built.items()}
    print(f"config: {write_resolved_config(cfg)}")
    for name, stage in built.items():
        stage.run(cfg, prepared[name])
    if any(stage.needs_ray for stage in built.values()):
        from ray_pipeline import tracking

        line = tracking.ui_line(cfg)
        if line is not None:
            print(line)
