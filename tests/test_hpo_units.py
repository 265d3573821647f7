"""HPO pieces that need no Ray cluster: resource planning, search space, sharding, the study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from ray_pipeline.direction import Direction
from ray_pipeline.errors import ConfigError
from ray_pipeline.hpo.search_space import to_distributions
from ray_pipeline.hpo.study import count_finished, fail_running, load_study, study_storage
from ray_pipeline.paths import VariantFiles
from ray_pipeline.resources import Node, plan_trials
from ray_pipeline.schema import HpoConfig, ResourcesConfig, StudyCheckpoint
from ray_pipeline.training import shard

LAPTOP = [Node(cpus=2, gpus=0)]


def _res(**kw: float | str) -> ResourcesConfig:
    return ResourcesConfig.model_validate(kw)


def test_plan_packs_trials_into_the_cluster() -> None:
    assert plan_trials(_res(), LAPTOP).max_concurrent_trials == 2
    assert plan_trials(_res(workers_per_trial=2), LAPTOP).max_concurrent_trials == 1
    assert plan_trials(_res(max_concurrent_trials=1), LAPTOP).max_concurrent_trials == 1
    gpus = [Node(cpus=8, gpus=4), Node(cpus=8, gpus=4)]
    plan = plan_trials(_res(workers_per_trial=2, cpus_per_worker=2, gpus_per_worker=1), gpus)
    assert plan.use_gpu and plan.max_concurrent_trials == 4


def test_fractional_gpus_pack_one_worker_trials_and_pick_the_trial_backend() -> None:
    two_gpus = [Node(cpus=4, gpus=2)]
    plan = plan_trials(_res(gpus_per_worker=0.5), two_gpus)
    assert plan.max_concurrent_trials == 4 and plan.in_process  # 2 trials per GPU
    assert plan_trials(_res(gpus_per_worker=0.25), two_gpus).max_concurrent_trials == 4  # CPUs
    assert not plan_trials(_res(trial_backend="train"), LAPTOP).in_process
    assert not plan_trials(_res(workers_per_trial=2), LAPTOP).in_process
    assert plan_trials(_res(max_failures=5), LAPTOP).max_failures == 5


def test_infeasible_cpu_request_names_what_was_asked_and_what_exists() -> None:
    with pytest.raises(ConfigError) as exc:
        plan_trials(_res(workers_per_trial=3), LAPTOP)
    text = str(exc.value)
    assert "resources.workers_per_trial" in text
    assert "3 worker(s) x (1 CPU, 0 GPU)" in text and "fits only 2" in text
    assert "1 node(s) with 2 CPUs and 0 GPUs" in text
    assert exc.value.exit_code == 2
    with pytest.raises(ConfigError, match="fits only 0"):
        plan_trials(_res(cpus_per_worker=4), LAPTOP)  # no single node has 4 CPUs


def test_gpu_request_without_gpus() -> None:
    with pytest.raises(ConfigError, match="asks for GPUs, but the cluster has none"):
        plan_trials(_res(gpus_per_worker=1), LAPTOP)


def test_search_space_becomes_optuna_distributions() -> None:
    hpo = HpoConfig.model_validate(
        {
            "search_space": {
                "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                "epochs": {"type": "int", "low": 1, "high": 5, "step": 2},
                "batch_size": {"type": "categorical", "choices": [8, 16]},
                "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
            }
        }
    )
    dists = to_distributions(hpo.search_space)
    assert list(dists) == ["batch_size", "epochs", "learning_rate", "warmup_ratio"]
    assert dists["learning_rate"] == optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    assert dists["epochs"] == optuna.distributions.IntDistribution(1, 5, step=2)
    assert dists["batch_size"] == optuna.distributions.CategoricalDistribution([8, 16])
    assert dists["warmup_ratio"].step == 0.1  # type: ignore[attr-defined]


@pytest.mark.parametrize(("n", "world"), [(10, 1), (10, 2), (11, 2), (7, 3), (2, 4)])
def test_every_rank_gets_the_same_number_of_examples(n: int, world: int) -> None:
    indices = list(range(100, 100 + n))
    shards = [shard(indices, rank, world) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1  # equal steps: DDP never waits forever
    assert set().union(*shards) == set(indices)  # every example is used


@pytest.mark.parametrize("backend", ["sqlite", "journal"])
def test_study_storage_and_stale_trials(tmp_path: Path, backend: str) -> None:
    variant = VariantFiles(tmp_path / "hpo_b")
    variant.path.mkdir()
    checkpoint = StudyCheckpoint.model_validate({"storage_backend": backend})
    study = load_study(study_storage(variant, "hpo_b", checkpoint), "hpo_b", Direction.MAXIMIZE)
    study.tell(study.ask(), 0.5)
    study.ask()  # left RUNNING, as by a killed driver
    again = load_study(study_storage(variant, "hpo_b", checkpoint), "hpo_b", Direction.MAXIMIZE)
    assert count_finished(again) == 1
    assert fail_running(again) == [1]
    assert [t.state.name for t in again.get_trials()] == ["COMPLETE", "FAIL"]
    assert fail_running(again) == []
    suffix = "study.db" if backend == "sqlite" else "study.journal"
    assert (variant.path / suffix).is_file()
