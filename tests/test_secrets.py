"""Credentials come from the environment and go nowhere: a whole smoke pipeline run with cloud
and MLflow secrets set (in the driver and, through it, every Ray worker) leaves neither value
in the outputs tree (records, studies, Tune state, MLflow's store and artifacts, the exported
model), on the console, or in any MLflow param or tag."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import MakeExp
from tests.processes import CLI

MARKERS = {
    "AWS_SECRET_ACCESS_KEY": "aws-secret-marker-7f3a9c",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-password-marker-41d2e8",
}


@pytest.mark.slow
def test_secrets_in_the_environment_leak_nowhere(smoke_experiment: MakeExp, tmp_path: Path) -> None:
    config = smoke_experiment(hpo={"num_samples": 1}, final_training={"epochs": 1})
    env = {**os.environ, **MARKERS, "MLFLOW_TRACKING_USERNAME": "admin"}
    done = subprocess.run(
        [*CLI, "run", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=900,
        check=False,
    )
    console = done.stdout + done.stderr
    assert done.returncode == 0, console.decode(errors="replace")[-3000:]
    outputs = tmp_path / "outputs"  # the whole outputs root, not only the experiment's tree
    files = [p for p in outputs.rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files)  # the whole pipeline ran
    assert any(p.name == "mlflow.db" for p in files)
    for marker in MARKERS.values():
        secret = marker.encode()
        assert secret not in console
        leaked = [str(p.relative_to(outputs)) for p in files if secret in p.read_bytes()]
        assert leaked == [], f"{marker} found in {leaked}"

    client = MlflowClient(f"sqlite:///{outputs / 't' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("t")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) >= 5  # variant, trial, folds, benchmark, selection, final
    for run in runs:
        values = [*run.data.params.values(), *run.data.tags.values()]
        for marker in MARKERS.values():
            assert not any(marker in str(v) for v in values), (run.info.run_name, marker)
