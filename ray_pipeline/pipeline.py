"""The table of contents: which stages exist, in which order they run.

    hpo -> benchmark -> select -> final

A stage is a ``check`` (every input problem, before anything is written: exit 2) and a
``run`` that takes what ``check`` prepared. First the checks that need no cluster
(``check_inputs``, which ``validate`` runs too), then the cluster's, then every requested
stage's; then the resolved config is written and the stages run in order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import yaml

from ray_pipeline import tracking
from ray_pipeline.artifacts import write_text_atomic
from ray_pipeline.cluster import check_storage
from ray_pipeline.console import quiet_libraries, redacted
from ray_pipeline.data.splits import check_local_files
from ray_pipeline.errors import ConfigError
from ray_pipeline.loading import load_config
from ray_pipeline.models import check_dropout, check_max_length, probe_backbones
from ray_pipeline.paths import OutputsLayout
from ray_pipeline.precision import check_config as check_precision
from ray_pipeline.schema import PipelineConfig
from ray_pipeline.storage import WorkerStorage, claim_namespace

if TYPE_CHECKING:
    from ray_pipeline.benchmark.results import BenchmarkResult
    from ray_pipeline.benchmark.stage import BenchmarkInputs
    from ray_pipeline.final.results import FinalMetrics
    from ray_pipeline.hpo.results import HpoResult
    from ray_pipeline.resources import TrialPlan
    from ray_pipeline.selection import SelectionResult

P = TypeVar("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Stage(Generic[P, R]):
    """A stage's two halves: ``check`` prepares a ``P`` that ``run`` takes, returning ``R``."""

    check: Callable[[PipelineConfig, Sequence[str]], P]
    """Given the config and every stage of this run."""
    run: Callable[[PipelineConfig, P], R]
    needs_ray: bool = True

    def checked(self, config: PipelineConfig, stages: Sequence[str]) -> Callable[[], R]:
        """Check now; the call returned runs the stage on what the check prepared."""
        prepared = self.check(config, stages)
        return lambda: self.run(config, prepared)


def _hpo() -> Stage[TrialPlan, list[HpoResult]]:
    from ray_pipeline.hpo.stage import check_hpo, run_hpo

    return Stage(lambda config, _: check_hpo(config), run_hpo)


def _benchmark() -> Stage[BenchmarkInputs, list[BenchmarkResult]]:
    from ray_pipeline.benchmark.stage import check_benchmark, run_benchmark

    return Stage(lambda config, _: check_benchmark(config), run_benchmark)


def _select() -> Stage[None, SelectionResult]:
    from ray_pipeline.selection import check_select, run_select

    return Stage(check_select, run_select, needs_ray=False)


def _final() -> Stage[TrialPlan, FinalMetrics]:
    from ray_pipeline.final.stage import check_final, run_final

    return Stage(check_final, run_final)


STAGE_ORDER: tuple[str, ...] = ("hpo", "benchmark", "select", "final")
STAGES: dict[str, Callable[[], Stage[Any, Any]]] = {
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


def check_inputs(
    config: PipelineConfig, stages: Sequence[str] = STAGE_ORDER, *, offline: bool = False
) -> None:
    """The checks that need no cluster, for ``run`` and ``validate`` alike (exit 2, nothing
    written): the outputs root, precision, each backbone (its config read: path, package or
    hub id) with the dropout and ``max_length`` it is given (with a stage that loads it), the
    search's data and the studies of the variants it would continue (with the HPO stage),
    worker storage (a probe file written, read back and
    removed) and the tracking server. ``offline`` (``validate``): data is read only where it
    is local files already present (the demo's are fetched by ``make demo`` later; a Hub
    dataset is downloaded by the run); a missing local file outside the data cache is
    refused all the same."""
    check_outputs_root(config)
    check_precision(config)
    if set(stages) & {"hpo", "benchmark", "final"}:  # the stages that load the backbones
        backbones = probe_backbones(config)
        check_dropout(config, backbones)
        check_max_length(config, backbones, stages)
    if "hpo" in stages:
        from ray_pipeline.hpo.stage import check_search_data, check_studies

        check_studies(config)
        if not offline or check_local_files(config.data):
            check_search_data(config)
    if set(stages) & {"hpo", "benchmark", "final"}:  # the stages whose workers write there
        check_storage(WorkerStorage.of(config))
    tracking.check_tracking(config)


def check_outputs_root(config: PipelineConfig) -> None:
    """Refuse (exit 2) an ``outputs_root`` that cannot be written, without creating it: it,
    or else the nearest of its ancestors that exists, must be a directory this user can
    write."""
    root = config.outputs_root.absolute()
    existing = next(p for p in (root, *root.parents) if p.exists())  # "/" exists
    if not existing.is_dir():
        problem = "is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = "is not writable by you"
    else:
        return
    what = str(root) if existing == root else f"{root} cannot be created: {existing}"
    fix = "set outputs_root to a directory you can write, or one that can be created"
    raise ConfigError.at("outputs_root", f"{what} {problem}; {fix}")


def check_cluster(config: PipelineConfig) -> None:
    """The checks that need Ray (started here): every node sees the worker storage and can
    reach the tracking store."""
    from ray_pipeline.cluster import check_shared_storage, ensure_ray

    ensure_ray(config.resources.address)
    nodes = check_shared_storage(WorkerStorage.of(config))
    tracking.check_tracking_for_nodes(config, nodes)
    shared = config.storage.uri is None  # else the study stays on the driver's own disk
    if nodes > 1 and shared and config.hpo.checkpoint.storage_backend == "sqlite":
        print(
            "warning: Optuna's SQLite study sits on shared storage, where file locking is "
            "unreliable; prefer hpo.checkpoint.storage_backend=journal (docs/cluster.md)"
        )


def resolved_yaml(config: PipelineConfig) -> str:
    """The resolved configuration as YAML, credentials in URIs masked (``console.redacted``):
    what ``config.resolved.yaml`` holds and ``validate --show`` prints."""
    return yaml.safe_dump(redacted(config.model_dump(mode="json")), sort_keys=False)


def write_resolved_config(config: PipelineConfig) -> Path:
    """``<outputs>/<experiment>/config.resolved.yaml``: what this run actually used."""
    path = OutputsLayout.of(config).resolved_config
    write_text_atomic(path, resolved_yaml(config))
    return path


def run(
    config: PipelineConfig | Path | str,
    stages: Sequence[str] = STAGE_ORDER,
    overrides: Sequence[str] = (),
) -> None:
    """Run ``stages`` (in pipeline order) of an experiment given as a config or a file path."""
    cfg = config if isinstance(config, PipelineConfig) else load_config(config, tuple(overrides))
    quiet_libraries()
    ordered = parse_stages(",".join(stages))
    check_inputs(cfg, ordered)
    built = [STAGES[name]() for name in ordered]
    needs_ray = any(stage.needs_ray for stage in built)
    if needs_ray:
        check_cluster(cfg)
    runs = [stage.checked(cfg, ordered) for stage in built]
    print(f"config: {write_resolved_config(cfg)}")
    for driver in tracking.end_orphaned_runs(cfg):
        pid = driver.rpartition("/")[2]
        print(f"mlflow: runs left RUNNING by a stopped run (pid {pid}) ended KILLED")
    if cfg.storage.uri is not None:
        claim_namespace(cfg.outputs_root)
    for run_stage in runs:
        run_stage()
    if needs_ray:
        line = tracking.ui_line(cfg)
        if line is not None:
            print(line)
