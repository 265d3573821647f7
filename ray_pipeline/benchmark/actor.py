"""The benchmark actor: the one module that defines it. One actor per device slot; an
``ActorPool`` of them measures every checkpoint that needs it, in parallel."""

from __future__ import annotations

from typing import Any

import ray

from ray_pipeline.benchmark.measure import measure
from ray_pipeline.benchmark.results import BenchmarkJob


@ray.remote
class BenchmarkActor:
    """Measures checkpoints one at a time on its device slot."""

    def __init__(self) -> None:
        from transformers.utils import logging

        logging.disable_progress_bar()  # per-load bars would flood the driver's log

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """``BenchmarkJob`` as a dict in, ``BenchmarkResult`` as a dict out."""
        actor_id = ray.get_runtime_context().get_actor_id() or "unknown"
        return measure(BenchmarkJob.model_validate(job), actor_id).model_dump(mode="json")
