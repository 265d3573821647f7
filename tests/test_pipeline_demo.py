"""The whole pipeline as a user runs it: the reduced demo (real MiniLM, real fine-foods reviews)
through `ray-pipeline run`, a second run that reuses every stage, the exported model in
`transformers.pipeline`, `report` and `status`.

Every command runs with cloud and MLflow credentials in its environment (in the driver and,
through it, every Ray worker): neither value may show in the outputs tree (records, studies,
Tune state, MLflow's store and artifacts, the registered and exported model), on the console,
or in any MLflow param or tag."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_pipeline.cluster import DASHBOARD_ENV
from tests.conftest import DEMO
from tests.run_outputs import assert_model_classifies

pytestmark = [pytest.mark.slow, pytest.mark.demo]

REDUCED = (
    "data.max_train_examples=32",
    "data.max_test_examples=16",
    "hpo.num_samples=2",
    "hpo.k_folds=2",
    "hpo.training.epochs=1",
    "hpo.training.max_length=32",
    "benchmark.benchmarking.iterations=3",
    "benchmark.benchmarking.warmup_iterations=1",
    "benchmark.benchmarking.max_length=32",
    "final_training.epochs=1",
    "final_training.register_model=true",
)


MARKERS = {
    "AWS_SECRET_ACCESS_KEY": "aws-secret-marker-7f3a9c",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-password-marker-41d2e8",
}
"""Secrets in every command's environment (with ``MLFLOW_TRACKING_USERNAME``), found nowhere."""

RECORDS = {"hpo.json", "variant.json"}
"""The files of an HPO variant that a reuse writes again (the study is reopened, finds no
trial to run, and records the same result)."""


def _stamps(root: Path) -> dict[str, int]:
    """The modification time of each file of the stage results under ``root`` (the demo's
    outputs): HPO, benchmark, selection and final variants and every file they hold."""
    stages = [root / "hpo", root / "selection", root / "final"]
    return {
        str(path.relative_to(root)): path.stat().st_mtime_ns
        for stage in stages
        for path in stage.rglob("*")
        if path.is_file()
    }


def _cli(*args: str, cwd: Path) -> tuple[int, str]:
    """The CLI as a user runs it: with the dashboard the suite turns off elsewhere."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **MARKERS, "MLFLOW_TRACKING_USERNAME": "admin"}
    env.pop(DASHBOARD_ENV, None)
    argv = [sys.executable, "-m", "ray_pipeline", *args]
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.usefixtures("demo_data", "demo_model_available")
def test_reduced_demo_end_to_end_then_reused(tmp_path: Path) -> None:
    args = ("--config", str(DEMO), f"outputs_root={tmp_path / 'outputs'}", *REDUCED)
    code, first = _cli("run", *args, cwd=tmp_path)
    assert code == 0, first[-4000:]
    assert re.search(r"^ray: \d+ CPUs, \d+ GPUs; dashboard: http://127\.0\.0\.1:\d+", first, re.M)
    root = tmp_path / "outputs" / "demo"
    hpo = root / "hpo" / "minilm" / "hpo_minilm"
    final = root / "final" / "minilm" / "final_minilm"
    for artifact in (
        root / "config.resolved.yaml",
        hpo / "hpo.json",
        hpo / "best" / "config.json",
        hpo / "benchmark.json",
        root / "selection" / "selection.json",
        final / "metrics.json",
        final / "lineage.json",
        final / "model" / "config.json",
        final / "model" / "README.md",
    ):
        assert artifact.is_file(), artifact
    assert "registered in MLflow as demo-minilm version 1" in first

    written = _stamps(root)
    hpo_result = (hpo / "hpo.json").read_text()
    start = time.monotonic()
    code, second = _cli("run", *args, cwd=tmp_path)
    print(f"second run: {time.monotonic() - start:.1f} s")
    assert code == 0, second[-4000:]
    for line in (
        "hpo minilm: reuse hpo_minilm; 2 of 2 trials finished, running 0",
        "benchmark: 1 trial(s) in scope, 0 to benchmark",
        "select: inputs unchanged, reusing",
        "final minilm: reuse final_minilm",
    ):
        assert line in second
    assert "worker group" not in second  # nothing trained
    # Every stage's results are the first run's: no variant or file added or removed, none
    # written again but the HPO variant's records, and those with the same result.
    again = _stamps(root)
    assert again.keys() == written.keys()
    rewritten = {path for path in written if again[path] != written[path]}
    assert {Path(path).name for path in rewritten} <= RECORDS, rewritten
    assert (hpo / "hpo.json").read_text() == hpo_result

    assert_model_classifies(final / "model")  # one epoch on 32 rows: not expected to learn

    code, out = _cli("report", *args, cwd=tmp_path)
    assert code == 0, out[-4000:]
    report = root / "report"
    index = (report / "index.html").read_text()
    rows = json.loads((report / "leaderboard.json").read_text())
    assert [(r["variant"], r["trials"], r["selection"]) for r in rows] == [
        ("hpo_minilm", "2/2", "winner")
    ]
    assert rows[0]["p95_ms"] > 0 and rows[0]["parameters"] > 20_000_000
    for figure in ("tradeoff-benchmark", "folds-hpo_minilm", "history-hpo_minilm"):
        assert (
            f'<figure id="fig-{figure}"><svg' in index
        )  # test_report.py opens such a page in Chromium
    assert "Parameter importance is not shown" in index  # 2 trials
    assert "wins with macro_f1" in index and "final_minilm" in index

    code, status = _cli("status", *args, cwd=tmp_path)
    assert code == 0 and "leaderboard:" in status and "hpo_minilm" in status
    _assert_no_secret(tmp_path / "outputs", [first, second, out, status])


def _assert_no_secret(outputs: Path, consoles: list[str]) -> None:
    """No ``MARKERS`` value in any file under ``outputs`` (the whole outputs root), in
    ``consoles``, or in a param or tag of the demo's MLflow runs."""
    from mlflow import MlflowClient

    files = [p for p in outputs.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files)
    for marker in MARKERS.values():
        assert not any(marker in console for console in consoles), marker
        leaked = [str(p.relative_to(outputs)) for p in files if marker.encode() in p.read_bytes()]
        assert leaked == [], f"{marker} found in {leaked}"
    client = MlflowClient(f"sqlite:///{outputs / 'demo' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("demo")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) >= 5  # variant, trials, folds, benchmark, selection, final
    for run in runs:
        values = [*run.data.params.values(), *run.data.tags.values()]
        for marker in MARKERS.values():
            assert not any(marker in str(v) for v in values), (run.info.run_name, marker)
