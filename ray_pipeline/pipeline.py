"""The table of contents: which stages exist, in which order they run.

    hpo -> benchmark -> select -> final

A stage is a function ``(config) -> None`` registered in ``STAGES``; a stage whose
implementation has not landed yet is ``None`` and stops the run with exit 1 before
anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ray_pipeline.errors import ConfigError, NotBuiltError
from ray_pipeline.loading import load_config
from ray_pipeline.schema import PipelineConfig

StageFn = Callable[[PipelineConfig], None]

STAGE_ORDER: tuple[str, ...] = ("hpo", "benchmark", "select", "final")
STAGES: dict[str, StageFn | None] = {
    "hpo": None,
    "benchmark": None,
    "select": None,
    "final": None,
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


def run(
    config: PipelineConfig | Path | str,
    stages: Sequence[str] = STAGE_ORDER,
    overrides: Sequence[str] = (),
) -> None:
    """Run ``stages`` (in pipeline order) of an experiment given as a config or a file path."""
    cfg = config if isinstance(config, PipelineConfig) else load_config(config, tuple(overrides))
    ordered = parse_stages(",".join(stages))
    missing = [s for s in ordered if STAGES[s] is None]
    if missing:
        raise NotBuiltError(
            f"stage(s) {', '.join(missing)} not built yet in this version of ray_pipeline; "
            "the configuration is valid (see `ray-pipeline validate`)"
        )
    for name in ordered:
        stage = STAGES[name]
        assert stage is not None
        stage(cfg)
