"""The variant manager: (stage, backbone, run.mode) -> a variant directory.

A variant is one numbered attempt of a stage for one backbone (``hpo_minilm``,
``hpo_minilm_v2``, ...), with its state in ``variant.json``. Creation is atomic:
the directory is assembled under a temporary name and renamed into place, so two
processes asking for ``force_new`` at once get two different variants and no reader
ever sees a variant without its ``variant.json``.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ray_pipeline.artifacts import read_json, write_json
from ray_pipeline.errors import ConfigError, PipelineError
from ray_pipeline.identity import changed_keys, same_study, stable_hash
from ray_pipeline.lease import (
    Lease,
    LeaseRecord,
    acquire,
    holder_alive,
    new_record,
    read_lease,
)
from ray_pipeline.naming import VariantStage, variant_base_name, variant_name, variant_number
from ray_pipeline.paths import OutputsLayout, VariantFiles
from ray_pipeline.run_mode import RunMode
from ray_pipeline.schema import PipelineConfig

VariantStatus = Literal["running", "complete", "stopped", "failed"]
"""``stopped``: an HPO budget (``hpo.time_budget_s``, ``hpo.patience``) ended the search before
``num_samples``; its results are used like a complete variant's, and a later run continues it."""
Action = Literal["create", "reuse", "resume"]
_MAX_CREATE_ATTEMPTS = 1000


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class VariantRecord(BaseModel):
    """Contents of ``variant.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    number: int
    stage: VariantStage
    backbone: str
    status: VariantStatus
    study_key_hash: str
    study_key: dict[str, Any]
    created_at: str
    updated_at: str
    host: str
    pid: int


@dataclass(frozen=True)
class Variant:
    """A variant directory and its record."""

    path: Path
    record: VariantRecord

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def files(self) -> VariantFiles:
        return VariantFiles(self.path)

    @property
    def complete(self) -> bool:
        return self.record.status == "complete"

    @property
    def usable(self) -> bool:
        """Its results can feed the later stages: complete, or stopped by a budget."""
        return self.record.status in ("complete", "stopped")


@dataclass(frozen=True)
class Decision:
    """What a stage should do: create a new variant, reuse a complete one, or resume one; with
    the variant's lease, held until the ``with`` block on the decision ends."""

    action: Action
    variant: Variant
    lease: Lease | None = None

    def __enter__(self) -> Decision:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.lease is not None:
            self.lease.release()


def base_name_for(config: PipelineConfig, stage: VariantStage, backbone: str) -> str:
    """The first variant's name for ``stage`` and ``backbone`` (HPO honours ``study_name``)."""
    template = config.hpo.checkpoint.study_name if stage == "hpo" else None
    return variant_base_name(stage, backbone, template)


def stage_place(config: PipelineConfig, stage: VariantStage, backbone: str) -> tuple[Path, str]:
    """Where ``backbone``'s variants of ``stage`` live, and their base name."""
    return OutputsLayout.of(config).stage_dir(stage, backbone), base_name_for(
        config, stage, backbone
    )


def list_variants(stage_dir: Path, base: str) -> list[Variant]:
    """The variants of ``base`` under ``stage_dir``, oldest first."""
    if not stage_dir.is_dir():
        return []
    found = []
    for child in stage_dir.iterdir():
        number = variant_number(base, child.name)
        record = VariantFiles(child).record
        if number is None or not record.is_file():
            continue
        found.append((number, Variant(child, read_json(record, VariantRecord))))
    return [v for _, v in sorted(found, key=lambda item: item[0])]


def backbone_variants(config: PipelineConfig, stage: VariantStage, backbone: str) -> list[Variant]:
    """The variants of ``stage`` for ``backbone`` in this experiment's outputs, oldest first."""
    return list_variants(*stage_place(config, stage, backbone))


def experiment_variants(config: PipelineConfig, stage: VariantStage) -> list[Variant]:
    """The variants of ``stage`` of every configured backbone (backbone by backbone)."""
    return [v for b in config.model.backbones for v in backbone_variants(config, stage, b.name)]


def _highest_number(stage_dir: Path, base: str) -> int:
    numbers = (
        [variant_number(base, c.name) for c in stage_dir.iterdir()] if stage_dir.is_dir() else []
    )
    return max((n for n in numbers if n is not None), default=0)


def create_variant(
    stage_dir: Path,
    base: str,
    stage: VariantStage,
    backbone: str,
    key: dict[str, Any],
    holder: LeaseRecord | None = None,
) -> Variant:
    """Atomically create the next variant of ``base`` (status ``running``), with its lease
    already held by ``holder`` when given (no other run can take it in between)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    number = _highest_number(stage_dir, base) + 1
    for _ in range(_MAX_CREATE_ATTEMPTS):
        name = variant_name(base, number)
        now = _now()
        record = VariantRecord(
            name=name,
            number=number,
            stage=stage,
            backbone=backbone,
            status="running",
            study_key_hash=stable_hash(key),
            study_key=key,
            created_at=now,
            updated_at=now,
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=stage_dir))
        write_json(VariantFiles(staging).record, record)
        if holder is not None:
            write_json(VariantFiles(staging).lease, holder)
        try:
            # rename(2) onto an existing non-empty directory fails: the name is taken.
            os.rename(staging, stage_dir / name)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            number = max(number + 1, _highest_number(stage_dir, base) + 1)
            continue
        return Variant(stage_dir / name, record)
    raise PipelineError(f"could not create a variant of {base} in {stage_dir}: too many collisions")


def set_status(variant: Variant, status: VariantStatus) -> Variant:
    """Record a new status in ``variant.json`` (atomically) and return the updated variant."""
    record = variant.record.model_copy(update={"status": status, "updated_at": _now()})
    write_json(variant.files.record, record)
    return Variant(variant.path, record)


SECTIONS: dict[VariantStage, str] = {"hpo": "hpo", "final": "final_training"}
"""The config section of each variant stage (where its ``run.mode`` is set)."""


def _check_same_study(variant: Variant, key: dict[str, Any], mode: RunMode) -> None:
    if variant.record.study_key_hash == stable_hash(key):
        return
    if same_study(variant.record.study_key, key):  # keyed by an older version, same study
        return
    stage = SECTIONS[variant.record.stage]
    verb = "reuse" if variant.complete else "resume"
    changes = "; ".join(changed_keys(variant.record.study_key, key)) or "unknown"
    message = (
        f"{mode} would {verb} {variant.name}, which was made for a different configuration. "
        f"Changed: {changes}. Set {stage}.run.mode=force_new to start a new variant, "
        "or restore the old values."
    )
    raise ConfigError.at(f"{stage}.run.mode", message)


def plan_variant(
    stage_dir: Path,
    base: str,
    key: dict[str, Any],
    mode: RunMode,
    *,
    auto_resume: bool = True,
) -> tuple[Action, Variant | None]:
    """What ``resolve_variant`` would do, and to which existing variant; writes nothing.

    reuse_if_exists: the latest variant (resumed if incomplete), or the first if none.
    force_new: always the next variant. resume_if_incomplete: the latest variant if it is
    incomplete, else the next. Reusing or resuming a variant made for another study key
    raises ConfigError naming the changed keys.
    """
    existing = list_variants(stage_dir, base)
    latest = existing[-1] if existing else None
    if mode == "force_new" or latest is None:
        return "create", None
    if mode == "resume_if_incomplete" and latest.complete:
        return "create", None
    _check_same_study(latest, key, mode)
    check_not_held(latest)
    if latest.complete or latest.record.status == "stopped":
        # A stopped variant's runs all ended: it is continued as it is (the HPO stage runs
        # its missing trials), under reuse_if_exists and resume_if_incomplete alike.
        return "reuse", latest
    if mode == "reuse_if_exists" and not auto_resume:
        stage = SECTIONS[latest.record.stage]
        raise ConfigError.at(
            f"{stage}.checkpoint.auto_resume",
            f"{latest.name} is incomplete ({latest.record.status}) and auto_resume is false; "
            f"set {stage}.run.mode=resume_if_incomplete to continue it, or force_new",
        )
    return "resume", latest


def check_not_held(variant: Variant) -> None:
    """ConfigError naming the holder when another live run holds ``variant``'s lease (so a
    stage refuses before it writes anything; taking the lease checks again)."""
    held = read_lease(variant.files.lease)
    if held is not None and holder_alive(held):
        raise ConfigError.at(
            variant.name,
            f"another run is working on it ({held.describe()}); wait for it to end, or stop it",
        )


def resolve_variant(
    stage_dir: Path,
    base: str,
    stage: VariantStage,
    backbone: str,
    key: dict[str, Any],
    mode: RunMode,
    *,
    auto_resume: bool = True,
) -> Decision:
    """Apply ``mode`` to the existing variants (``plan_variant``): create the next variant,
    or mark the one to resume ``running``; what the stage should do, with the variant's lease
    held (``lease.py``; ConfigError naming the holder when another run works on it) until the
    stage's ``with`` block on the decision ends. Planned again once the lease is held: the
    run that held it may have finished the variant meanwhile."""
    for _ in range(3):
        action, existing = plan_variant(stage_dir, base, key, mode, auto_resume=auto_resume)
        if existing is None:
            record = new_record()
            variant = create_variant(stage_dir, base, stage, backbone, key, record)
            return Decision("create", variant, Lease(variant.files.lease, record))
        held = acquire(existing.files.lease, existing.name)
        try:
            action, again = plan_variant(stage_dir, base, key, mode, auto_resume=auto_resume)
            if again is not None and again.path == existing.path:
                if action == "resume":
                    return Decision("resume", set_status(again, "running"), held)
                return Decision(action, again, held)
        except BaseException:
            held.release()
            raise
        held.release()  # another variant is the one to work on now
    raise PipelineError(f"{base}: other runs keep changing its variants; try again")
