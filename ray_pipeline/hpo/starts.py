"""A new variant's first trials: the best parameter sets of the backbone's latest earlier
variant (``hpo.warm_start``), fitted to the current search space, then ``hpo.enqueue``, then
the untuned recipe (``hpo.defaults_first``)."""

from __future__ import annotations

import math
from typing import Any

from ray_pipeline.hpo.results import ENQUEUED_FROM, read_hpo
from ray_pipeline.hpo.search_space import fit_point
from ray_pipeline.schema import BackboneConfig, HpoConfig, PipelineConfig
from ray_pipeline.schema.search import condition_holds, in_space
from ray_pipeline.variants import Variant, backbone_variants


def enqueue_starts(
    config: PipelineConfig, backbone: BackboneConfig, variant: Variant, study: Any
) -> None:
    """A new variant's first trials: the best ``hpo.warm_start`` parameter sets of the latest
    earlier variant of this backbone (fitted to the current space), then ``hpo.enqueue``, then
    the untuned recipe unless one of them is that point (``hpo.defaults_first``)."""
    hpo, label = config.hpo, f"hpo {backbone.name}"
    starts: list[tuple[dict[str, Any], str]] = []
    if hpo.warm_start:
        earlier = [
            found
            for v in backbone_variants(config, "hpo", backbone.name)
            if v.path != variant.path and (found := read_hpo(v.files)) is not None
        ]
        if not earlier:
            print(f"{label}: warm_start: no earlier variant with results; starting cold")
        else:
            source = earlier[-1]
            complete = [
                t
                for t in source.trials
                if t.state == "COMPLETE"
                and t.objective_mean is not None
                and not math.isnan(t.objective_mean)
            ]
            ranked = source.direction.ranked(complete, key=lambda t: t.objective_mean or 0.0)
            for trial in ranked[: hpo.warm_start]:
                point, notes = fit_point(hpo.search_space, trial.params)
                origin = trial.label
                print(
                    f"{label}: warm start from {origin}: {point}" + "".join(f"; {n}" for n in notes)
                )
                starts.append((point, origin))
    for index, point in enumerate(hpo.enqueue):
        starts.append((point, f"hpo.enqueue[{index}]"))
    if hpo.defaults_first and hpo.sampler.type != "grid":
        point, outside = untuned_point(hpo)
        if outside:
            print(
                f"{label}: defaults_first: not run, the search space leaves out hpo.training's "
                + ", ".join(outside)
            )
        elif all(point != earlier for earlier, _ in starts):
            print(f"{label}: trial {len(starts)} runs hpo.training's values first: {point}")
            starts.append((point, DEFAULTS_ORIGIN))
    for point, origin in starts:
        study.enqueue_trial(point, user_attrs={ENQUEUED_FROM: origin})


DEFAULTS_ORIGIN = "hpo.training (defaults_first)"
"""``enqueued_from`` of the trial that runs the untuned recipe."""


def untuned_point(hpo: HpoConfig) -> tuple[dict[str, Any], list[str]]:
    """(point, outside): ``hpo.training``'s values of the searched parameters (a conditional
    one where its condition holds there), and ``name value`` for each of them that lies outside
    the search space (then there is no untuned point to run)."""
    space = hpo.search_space
    point: dict[str, Any] = {}
    outside: list[str] = []
    # conditions name unconditional parameters only (check_conditions), so these come first
    for name in sorted(space, key=lambda n: bool(space[n].when)):
        spec = space[name]
        if not condition_holds(spec, point):
            continue
        value = getattr(hpo.training, name)
        if in_space(spec, value):
            point[name] = value
        else:
            outside.append(f"{name} {value!r}")
    return point, outside
