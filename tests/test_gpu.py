"""The CUDA path on a real GPU of this machine (every test here is marked ``gpu``: skipped
without one, tests/gpus.py). The suite hides the host's GPUs from every other test; here the
CLI runs as a child process with one host GPU visible, and the local Ray cluster it starts
declares that GPU. One small pipeline run (1 epoch per fold, the tiny BERT, the GPU defaults
left as they are) is shared by the tests: two HPO trials at 0.5 GPU each train at once on the
GPU, in bf16 (``precision: auto`` on a GPU with native bfloat16); a benchmark actor measures
the best trial on the GPU; the refit trains on one GPU (``final_training.resources`` null)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ray_pipeline.artifacts import read_json
from ray_pipeline.benchmark.results import BenchmarkResult
from ray_pipeline.final.results import FinalMetrics
from ray_pipeline.hpo.results import HpoResult
from tests.conftest import CONFIG_DIR
from tests.gpus import cuda_probe, gpu_env, gpu_id
from tests.processes import CLI
from tests.run_outputs import embedded_store, mlflow_runs

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

EXPERIMENT = "gpu"


@dataclass(frozen=True)
class GpuRun:
    """What the run on the GPU left: its outputs root and its console output."""

    outputs: Path
    log: str

    @property
    def variant(self) -> Path:
        return self.outputs / EXPERIMENT / "hpo" / "tiny-bert" / "hpo_tiny-bert"


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory: pytest.TempPathFactory) -> GpuRun:
    """`ray-pipeline run` (hpo, benchmark, select, final) on one GPU of this machine."""
    root = tmp_path_factory.mktemp("gpu")
    experiment = {
        "include": {
            "data": str(CONFIG_DIR / "data" / "tiny_reviews.yaml"),
            "model": str(CONFIG_DIR / "model" / "tiny_bert.yaml"),
            "hpo": str(CONFIG_DIR / "hpo" / "smoke.yaml"),
        },
        "experiment": {"name": EXPERIMENT},
        "outputs_root": str(root / "outputs"),
        # Two trials of two folds, 2 epochs each (long enough that the two overlap).
        "hpo": {"num_samples": 2, "k_folds": 2, "training": {"epochs": 2}},
        "resources": {"gpus_per_worker": 0.5, "cpus_per_worker": 1},
        "benchmark": {
            "benchmarking": {
                "batch_sizes": [1, 4],
                "iterations": 5,
                "warmup_iterations": 1,
                "max_length": 32,
            }
        },
        "final_training": {"epochs": 1},
    }
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False), encoding="utf-8")
    argv = [*CLI, "run", "--config", str(path), "--stages", "hpo,benchmark,select,final"]
    done = subprocess.run(
        argv, cwd=root, env=gpu_env(), capture_output=True, text=True, timeout=900
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    return GpuRun(root / "outputs", log)


def test_two_half_gpu_trials_train_at_once_on_the_one_gpu(gpu_run: GpuRun) -> None:
    assert "ray: " in gpu_run.log and " 1 GPUs;" in gpu_run.log  # the child's cluster: one GPU
    trials = read_json(gpu_run.variant / "hpo.json", HpoResult).trials
    assert [t.state for t in trials] == ["COMPLETE", "COMPLETE"]
    gpus = {(t.number, f.fold): f.gpu_ids for t in trials for f in t.folds}
    assert len(gpus) == 4 and all(ids == [gpu_id()] for ids in gpus.values()), gpus
    runs = mlflow_runs(embedded_store(gpu_run.outputs, EXPERIMENT), EXPERIMENT)
    spans = [
        (r.info.start_time, r.info.end_time)
        for r in runs
        if r.data.tags.get("ray_pipeline.kind") == "trial"
    ]
    assert len(spans) == 2 and all(end is not None for _, end in spans), spans
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans  # they overlapped


def test_the_trials_and_the_refit_train_in_bf16(gpu_run: GpuRun) -> None:
    if not cuda_probe()[1]:
        pytest.skip("this GPU has no native bfloat16: precision auto trains in fp32 there")
    trials = read_json(gpu_run.variant / "hpo.json", HpoResult).trials
    assert {f.precision for t in trials for f in t.folds} == {"bf16"}
    final = gpu_run.outputs / EXPERIMENT / "final" / "tiny-bert" / "final_tiny-bert"
    metrics = read_json(final / "metrics.json", FinalMetrics)
    assert [e.precision for e in metrics.epochs] == ["bf16"]


def test_the_refit_trains_on_one_gpu(gpu_run: GpuRun) -> None:
    final = gpu_run.outputs / EXPERIMENT / "final" / "tiny-bert" / "final_tiny-bert"
    metrics = read_json(final / "metrics.json", FinalMetrics)
    refit = metrics.refit
    assert refit is not None
    assert (refit.workers, refit.gpus_per_worker, refit.device) == (1, 1.0, "cuda"), refit
    assert refit.backend == "task" and metrics.test_metrics["accuracy"] >= 0.0


def test_a_benchmark_actor_measures_on_the_gpu(gpu_run: GpuRun) -> None:
    bench = read_json(gpu_run.variant / "benchmark.json", BenchmarkResult)
    assert bench.device.startswith("cuda:0 ("), bench.device  # its one GPU, named
    assert bench.precision == ("bf16" if cuda_probe()[1] else "fp32")
    assert [s.batch_size for s in bench.latency] == [1, 4]
    assert all(s.p95_ms > 0 for s in bench.latency)
    assert "benchmark: 1 actor(s) (0 CPU, 1 GPU each)" in gpu_run.log
