"""GPU placement on a real local Ray cluster that declares two fake GPUs (``tests.gpus``: Ray
hands them out, torch sees none): fractional GPUs pack several one-worker trials on one GPU;
DDP trials on a shared GPU are refused at validation. tests/test_gpu.py trains on a real one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.loading import load_config
from ray_pipeline.resources import cluster_nodes, plan_trials
from tests.conftest import MakeExp
from tests.gpus import fake_ids, start_ray

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_declared_gpus() -> Iterator[None]:
    import ray

    start_ray(num_cpus=4, num_gpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_half_a_gpu_per_trial_packs_four_trials_on_two_gpus(
    two_declared_gpus: None, smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    path = smoke_experiment(resources={"gpus_per_worker": 0.5, "cpus_per_worker": 1})
    plan = plan_trials(load_config(path).resources, cluster_nodes())
    assert plan.max_concurrent_trials == 4 and plan.in_process and plan.gpus_per_worker == 0.5

    # For real: four trials at once, each in its own process with the GPU Ray gave it.
    assert main(["hpo", "--config", str(path), "hpo.num_samples=4"]) == 0
    variant = tmp_path / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    trials = read_json(variant / "hpo.json", HpoResult).trials
    assert [t.state for t in trials] == ["COMPLETE"] * 4
    per_gpu = Counter(gpu for t in trials for gpu in t.folds[0].gpu_ids)
    assert per_gpu == dict.fromkeys(fake_ids(2).split(","), 2), per_gpu  # two on each GPU


def test_ddp_on_a_shared_gpu_is_refused_at_validate(
    smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(smoke_experiment())
    args = ["resources.gpus_per_worker=0.5", "resources.workers_per_trial=2"]
    assert main(["validate", "--config", path, *args]) == 2
    err = capsys.readouterr().err
    assert "resources" in err and "gpus_per_worker=0.5 with workers_per_trial=2" in err
    assert "Duplicate GPU detected" in err and "gpus_per_worker=1" in err
    assert main(["validate", "--config", path, "resources.gpus_per_worker=1", args[1]]) == 0
    assert main(["validate", "--config", path, "resources.gpus_per_worker=0.5"]) == 0
    assert not (tmp_path / "outputs").exists()
