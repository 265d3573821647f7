"""Final training's resources: the refit's own plan (the whole cluster by default), the batch
rule that keeps the source trial's effective batch, the epoch order shared by every rank, and
the plan on a real local Ray cluster that declares four fake GPUs (``tests.gpus``), and
metrics.json files written before the refit was recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from ray_pipeline import resources
from ray_pipeline.cli import main
from ray_pipeline.errors import ConfigError
from ray_pipeline.final.results import upgrade_metrics
from ray_pipeline.final.stage import check_final
from ray_pipeline.loading import load_config
from ray_pipeline.resources import Node, plan_final
from ray_pipeline.schema import FinalResources, ResourcesConfig
from ray_pipeline.training import batches, epoch_shard, per_worker_batch
from tests.builders import add_hpo_variant
from tests.conftest import MakeExp
from tests.gpus import start_ray

LAPTOP = [Node(cpus=2, gpus=0)]
TRIALS = ResourcesConfig()


def _plan(
    nodes: list[Node], trials: ResourcesConfig = TRIALS, **final: float
) -> tuple[int, float, float, bool]:
    plan = plan_final(FinalResources.model_validate(final), trials, nodes)
    return plan.workers, plan.cpus_per_worker, plan.gpus_per_worker, plan.in_process


def test_on_cpus_the_refit_takes_every_core_of_the_largest_nodes() -> None:
    # One node: one worker in one process, all the node's cores as torch threads.
    assert _plan(LAPTOP) == (1, 2.0, 0.0, True)
    # A CPU cluster: one DDP worker per node of the largest size, a small head left out.
    cluster = [Node(cpus=4, gpus=0), Node(cpus=16, gpus=0), Node(cpus=16, gpus=0)]
    assert _plan(cluster) == (2, 16.0, 0.0, False)
    assert _plan(cluster, max_workers=1) == (1, 16.0, 0.0, True)
    # Workers asked for: the most cores each that still fit them all.
    assert _plan(LAPTOP, workers=2) == (2, 1.0, 0.0, False)
    assert _plan(cluster, workers=3) == (3, 8.0, 0.0, False)
    assert _plan(LAPTOP, cpus_per_worker=1) == (2, 1.0, 0.0, False)
    # resources.trial_backend=train: a Ray Train worker group also for one worker.
    assert _plan(LAPTOP, ResourcesConfig(trial_backend="train")) == (1, 2.0, 0.0, False)


def test_on_gpus_the_refit_takes_one_worker_per_gpu() -> None:
    gpus = [Node(cpus=8, gpus=4), Node(cpus=8, gpus=4)]
    assert _plan(gpus) == (8, 1.0, 1.0, False)
    assert _plan(gpus, max_workers=2) == (2, 1.0, 1.0, False)
    # resources.cpus_per_worker feeds each GPU worker, as far as the CPUs per GPU allow.
    assert _plan(gpus, ResourcesConfig(cpus_per_worker=4)) == (8, 2.0, 1.0, False)
    assert _plan(gpus, gpus_per_worker=0) == (2, 8.0, 0.0, False)  # CPU training asked for
    assert _plan(gpus, gpus_per_worker=0.5) == (1, 1.0, 0.5, True)  # never DDP on one GPU
    plan = plan_final(FinalResources(), ResourcesConfig(max_failures=5), gpus)
    assert plan.max_failures == 5 and plan.max_concurrent_trials == 1
    # GPUs torch cannot use (a CPU build of torch, CUDA hidden): the default trains on CPUs;
    # GPUs asked for are placed on them.
    unusable = [Node(cpus=8, gpus=4, cuda=False), Node(cpus=8, gpus=4, cuda=False)]
    assert _plan(unusable) == (2, 8.0, 0.0, False)
    assert _plan(unusable, gpus_per_worker=1) == (8, 1.0, 1.0, False)


def test_impossible_requests_name_the_key_what_was_asked_and_what_exists() -> None:
    with pytest.raises(ConfigError) as exc:
        _plan(LAPTOP, workers=3)
    text = str(exc.value)
    assert text.startswith("final_training.resources.workers: ") and exc.value.exit_code == 2
    assert "3 worker(s) x (1 CPU, 0 GPU) per worker" in text and "fits 2" in text
    assert "1 node(s) with 2 CPUs and 0 GPUs" in text
    with pytest.raises(ConfigError, match="fits 0"):
        _plan(LAPTOP, cpus_per_worker=4)
    with pytest.raises(ConfigError, match=r"gpus_per_worker: .* the cluster has none"):
        _plan(LAPTOP, gpus_per_worker=1)
    with pytest.raises(ValidationError, match=r"gpus_per_worker=0\.5 with workers=2"):
        FinalResources(workers=2, gpus_per_worker=0.5)


@pytest.mark.parametrize(
    ("batch", "workers", "per_worker", "effective"),
    [(16, 1, 16, 16), (16, 2, 8, 16), (16, 3, 6, 18)],
)
def test_the_effective_batch_stays_the_trials(
    batch: int, workers: int, per_worker: int, effective: int
) -> None:
    assert per_worker_batch(batch, workers) == per_worker
    assert per_worker_batch(batch, workers) * workers == effective


def test_every_rank_takes_its_share_of_one_shuffled_epoch() -> None:
    one = epoch_shard(11, seed=7, rank=0, world=1)
    assert sorted(one) == list(range(11)) and one != list(range(11))
    assert epoch_shard(11, seed=8, rank=0, world=1) != one  # a new order every epoch
    two = [epoch_shard(11, seed=7, rank=r, world=2) for r in range(2)]
    assert len(two[0]) == len(two[1]) == 6 and set(two[0]) | set(two[1]) == set(range(11))
    assert two[0] == one[0::2] and two[1] == [*one, *one[:1]][1::2]  # one order, dealt out
    # With one worker the order is what the single-process loop always used.
    rows = [{"input_ids": [i + 5], "attention_mask": [1], "labels": 0} for i in range(11)]
    shuffled = [int(b["input_ids"][0, 0]) - 5 for b in batches(rows, 1, 0, shuffle_seed=7)]
    assert shuffled == one


@pytest.fixture(scope="module")
def four_declared_gpus() -> Iterator[None]:
    import ray

    start_ray(num_cpus=2, num_gpus=4, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_on_a_cluster_with_four_gpus_the_refit_plans_four_workers(
    four_declared_gpus: None,
    smoke_experiment: MakeExp,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = smoke_experiment()
    add_hpo_variant(load_config(path), "tiny-bert", 0.5)
    named = "final_training.source.variant=hpo_tiny-bert"
    stages = ("final",)
    # Torch here sees none of the four: the default trains on the CPUs, one worker on both.
    plan = check_final(load_config(path, [named]), stages)
    assert (plan.workers, plan.gpus_per_worker, plan.cpus_per_worker) == (1, 0.0, 2.0)
    # GPUs torch can use (as on a GPU machine): one DDP worker per GPU.
    monkeypatch.setattr(resources, "torch_uses_gpus", lambda on_this_node: True)
    plan = check_final(load_config(path, [named]), stages)
    assert (plan.workers, plan.gpus_per_worker, plan.cpus_per_worker) == (4, 1.0, 0.5)
    plan = check_final(load_config(path, [named, "final_training.resources.max_workers=2"]), stages)
    assert (plan.workers, plan.gpus_per_worker) == (2, 1.0) and not plan.in_process

    final = tmp_path / "outputs" / "t" / "final"
    args = ["train", "--config", str(path), named, "final_training.resources.workers=8"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "final_training.resources.workers: final training asks for 8 worker(s)" in err
    assert "fits 4" in err and "4 GPUs" in err
    assert not final.exists()  # refused before anything was written


def test_a_metrics_json_from_before_refit_was_recorded_stays_readable() -> None:
    older = {"variant": "final_b", "workers": 2, "seconds": 3.0}
    assert upgrade_metrics(older) == {
        "variant": "final_b",
        "seconds": 3.0,
        "refit": None,
    }
    newer = {"variant": "final_b", "refit": {"workers": 1}}
    assert upgrade_metrics(newer) == newer


def _session_threads() -> tuple[int, int]:
    """In a Ray task: the threads a loop's session sets, and what torch then uses."""
    import torch

    from ray_pipeline.sessions import TaskSession

    return TaskSession().threads, torch.get_num_threads()


@pytest.mark.slow
def test_a_session_trains_with_as_many_threads_as_cpus_it_reserved(
    four_declared_gpus: None,
) -> None:
    import ray

    probe = ray.remote(_session_threads)
    for cpus in (2, 1, 2):  # the same worker process may serve one reservation after another
        assert ray.get(probe.options(num_cpus=cpus).remote()) == (cpus, cpus)
