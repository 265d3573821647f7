"""The MLflow run tree: which run each stage opens, under which parent, with which name and
tags (over ``tracking``'s generic operations; stage code never builds a run's name or tags)::

    hpo_<backbone>[_vN]                        one parent run per variant (found again by tags)
      hpo_<backbone>[_vN]_trial_<n>            one child per trial (created by its trial driver)
        hpo_<backbone>[_vN]_trial_<n>_fold<k>  one grandchild per fold (created by rank 0)
    benchmark_hpo_<backbone>[_vN]              one run per benchmarked variant (its best trial)
    selection                                  one run per computed selection
    final_<backbone>[_vN]                      one run per final variant (resumes continue it)

Trial and fold runs, and the benchmark, selection and final runs made from a trial, carry its
lineage as tags: an ``Origin`` (backbone, variant, trial number, trial and study hashes), which
the records themselves make (``TrialRecord.origin()``, ``TrialJob.origin()``), and the HPO
variant run's id. This module imports no stage's records.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from ray_pipeline.schema import PipelineConfig
from ray_pipeline.tracking import (
    EndStatus,
    RunRef,
    end,
    end_open_runs,
    find_child,
    find_run_id,
    log,
    open_child,
    open_stage_run,
    set_tags,
)


class Origin(BaseModel):
    """Where a run's subject came from: an HPO variant and, for a trial or what was made of
    one, its trial. Its fields are the run's lineage tags."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: str
    variant: str
    study_key_hash: str
    trial: int | None = None
    trial_key_hash: str | None = None

    def tags(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def run_name(variant: str, trial: int | None = None, fold: int | None = None) -> str:
    """``hpo_b``, ``hpo_b_trial_3``, ``hpo_b_trial_3_fold1``: deterministic, no timestamps."""
    name = variant if trial is None else f"{variant}_trial_{trial}"
    return name if fold is None else f"{name}_fold{fold}"


def open_variant_run(
    config: PipelineConfig, stage: str, backbone: str, variant: str, study_key_hash: str
) -> RunRef | None:
    """The variant's parent run (reused across reuse/resume runs), or None when tracking is off."""
    return open_stage_run(
        config,
        "variant",
        run_name(variant),
        {"stage": stage, "variant": variant},
        backbone=backbone,
        study_key_hash=study_key_hash,
    )


def _lineage(config: PipelineConfig, origin: Origin) -> dict[str, Any]:
    """The tags that tie a later stage's run to the HPO trial it used and the variant's run
    (not the variant's name: the ``variant`` tag is the run's own)."""
    tags = {k: v for k, v in origin.tags().items() if k != "variant"}
    return {**tags, "hpo_run_id": hpo_run_id(config, origin.variant)}


def hpo_run_id(config: PipelineConfig, variant: str) -> str | None:
    """The id of an HPO variant's run, or None (tracking off, or no such run)."""
    return find_run_id(config, "variant", stage="hpo", variant=variant)


def open_trial_run(parent: RunRef, origin: Origin) -> RunRef:
    """The run of trial ``origin.trial``, under its variant's run (a retry finds it again)."""
    return open_child(
        parent, "trial", run_name(origin.variant, origin.trial), stage="hpo", **origin.tags()
    )


def open_fold_run(trial_run: RunRef, origin: Origin, fold: int) -> RunRef:
    """The run of one fold of trial ``origin.trial``, under the trial's run."""
    name = run_name(origin.variant, origin.trial, fold)
    return open_child(trial_run, "fold", name, stage="hpo", fold=fold, **origin.tags())


def open_benchmark_run(
    config: PipelineConfig, trial: Origin, device: str, precision: str | None
) -> RunRef | None:
    """The run of one trial's benchmark on ``device`` in ``precision`` (a re-benchmark of the
    same trial there reuses it; on another device or in another precision it has a run of its
    own, as its params differ)."""
    key = {"variant": trial.variant, "trial_key_hash": trial.trial_key_hash}
    return open_stage_run(
        config,
        "benchmark",
        f"benchmark_{trial.variant}",
        {**key, "device": device, "precision": precision or "fp32"},
        stage="benchmark",
        **_lineage(config, trial),
    )


def open_selection_run(
    config: PipelineConfig, cache_key: str, winner: Origin, benchmark_run_id: str | None
) -> RunRef | None:
    """The run of one selection (its cache key identifies it), tagged with the winner."""
    return open_stage_run(
        config,
        "selection",
        "selection",
        {"cache_key": cache_key},
        stage="select",
        variant=winner.variant,
        benchmark_run_id=benchmark_run_id,
        **_lineage(config, winner),
    )


def open_final_run(
    config: PipelineConfig,
    variant: str,
    source: Origin,
    final_key_hash: str,
    chosen: Mapping[str, Any],
) -> RunRef | None:
    """The final variant's run (a resumed refit continues it), tagged with its source trial
    and how it was ``chosen`` (``SourceTrial.choice()``)."""
    return open_stage_run(
        config,
        "variant",
        run_name(variant),
        {"stage": "final", "variant": variant},
        final_key_hash=final_key_hash,
        source_variant=source.variant,
        **chosen,
        **_lineage(config, source),
    )


def end_trial_runs(parent: RunRef, trials: list[int], status: EndStatus) -> None:
    """Set the runs of ``trials`` under ``parent`` (and their fold runs still open) to
    ``status``, whatever they say now: used for trials an interruption cut off."""
    for trial in trials:
        run = find_child(parent, "trial", trial=trial)
        if run is not None:
            end(run, status)
            end_open_runs(run, status)


def note_retries(parent: RunRef, trial: int, failures: list[str], resumes: list[str]) -> None:
    """Record on a trial's run why its attempts failed and where each retry resumed."""
    run = find_child(parent, "trial", trial=trial)
    if run is None:
        return
    log(run, metrics={"retries": float(max(len(failures), len(resumes)))})
    notes = {"failures": "; ".join(failures), "resumed_at": "; ".join(resumes)}
    set_tags(run, **{k: v[:5000] for k, v in notes.items() if v})
