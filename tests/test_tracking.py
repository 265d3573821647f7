"""The tracking module against a real MLflow store (SQLite file). A real run's run tree and
lineage tags: test_hpo_ray.py; against an MLflow server: test_cluster_job.py."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import ray_pipeline
from ray_pipeline import run_tree, tracking
from ray_pipeline.errors import ConfigError
from ray_pipeline.lease import process_identity
from ray_pipeline.loading import load_config
from tests.conftest import MakeExp
from tests.processes import free_port


def test_tracking_uri_precedence(
    smoke_experiment: MakeExp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = smoke_experiment()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(load_config(path)) == f"sqlite:///{tmp_path}/outputs/t/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.tracking_uri(load_config(path)) == "http://127.0.0.1:1"
    cfg = load_config(path, ["tracking.tracking_uri=http://127.0.0.1:2"])
    assert tracking.tracking_uri(cfg) == "http://127.0.0.1:2"
    assert tracking.tracking_uri(load_config(path, ["tracking.enabled=false"])) is None


def test_unreachable_server_is_refused_after_one_health_probe(
    smoke_experiment: MakeExp, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = load_config(smoke_experiment(), [f"tracking.tracking_uri={uri}"])
    probes: list[tuple[str, float]] = []
    urlopen = urllib.request.urlopen

    def probe(url: str, timeout: float) -> Any:
        probes.append((url, timeout))
        return urlopen(url, timeout=timeout)

    def no_client(_: str) -> None:
        pytest.fail("check_tracking went through MLflow's client (minutes of retries)")

    monkeypatch.setattr(urllib.request, "urlopen", probe)  # as tracking calls it
    monkeypatch.setattr(tracking, "_client", no_client)
    with pytest.raises(ConfigError) as exc:
        tracking.check_tracking(cfg)
    # Refused at once: a single /health request with a timeout of seconds, no retries.
    assert probes == [(f"{uri}/health", tracking._REACH_TIMEOUT_S)]
    assert 0 < tracking._REACH_TIMEOUT_S <= 5
    assert f"MLflow server {uri} is not reachable" in str(exc.value)
    assert "tracking.enabled=false" in str(exc.value)


def test_names_and_tags() -> None:
    assert run_tree.run_name("hpo_b") == "hpo_b"
    assert run_tree.run_name("hpo_b", 3, 1) == "hpo_b_trial_3_fold1"
    tags = tracking.run_tags("trial", parent="p1", variant="hpo_b", trial=3, fold=None)
    assert tags == {
        "ray_pipeline.kind": "trial",
        "ray_pipeline.variant": "hpo_b",
        "ray_pipeline.trial": "3",
        "mlflow.parentRunId": "p1",
    }


def test_parent_found_again_and_open_runs_ended(smoke_experiment: MakeExp, tmp_path: Path) -> None:
    cfg = load_config(smoke_experiment())
    parent = run_tree.open_variant_run(cfg, "hpo", "tiny-bert", "hpo_tiny-bert", "abc")
    assert parent is not None
    again = run_tree.open_variant_run(cfg, "hpo", "tiny-bert", "hpo_tiny-bert", "abc")
    assert again == parent
    other = run_tree.open_variant_run(cfg, "hpo", "tiny-bert", "hpo_tiny-bert_v2", "abc")
    assert other is not None and other.run_id != parent.run_id
    trial = tracking.open_child(parent, "trial", "hpo_tiny-bert_trial_0", trial=0)
    assert tracking.open_child(parent, "trial", "hpo_tiny-bert_trial_0", trial=0) == trial
    fold = tracking.open_child(trial, "fold", "hpo_tiny-bert_trial_0_fold0", trial=0, fold=0)
    tracking.log(fold, metrics={"objective": 0.5, "note": "text is skipped"}, params={"a": 1})  # type: ignore[dict-item]
    assert tracking.end_open_runs(parent) == 2  # trial and fold, not the parent itself
    client = MlflowClient(parent.tracking_uri)
    assert client.get_run(fold.run_id).info.status == "KILLED"
    assert client.get_run(fold.run_id).data.metrics == {"objective": 0.5}
    assert client.get_run(parent.run_id).info.status == "RUNNING"
    assert client.get_run(trial.run_id).data.tags["mlflow.parentRunId"] == parent.run_id


def test_history_is_logged_per_step_and_gaps_are_skipped(
    smoke_experiment: MakeExp,
) -> None:
    cfg = load_config(smoke_experiment())
    run = run_tree.open_variant_run(cfg, "hpo", "tiny-bert", "hpo_tiny-bert", "abc")
    assert run is not None
    tracking.log_history(
        run,
        {
            1: {"train_loss": 0.7, "validation_macro_f1": None, "learning_rate": 2e-5},
            2: {"train_loss": 0.5, "validation_macro_f1": 0.8, "learning_rate": 1e-5},
        },
    )
    client = MlflowClient(run.tracking_uri)

    def curve(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, key))

    assert curve("train_loss") == [(1, 0.7), (2, 0.5)]
    assert curve("validation_macro_f1") == [(2, 0.8)]  # epoch 1 was not evaluated
    assert curve("learning_rate") == [(1, 2e-5), (2, 1e-5)]
    assert client.get_run(run.run_id).data.metrics["train_loss"] == 0.5  # the last step's


def test_experiments_open_the_model_view_and_keep_artifacts_under_outputs(
    smoke_experiment: MakeExp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store the user named (not a server) keeps its artifacts under outputs/, not in
    ./mlruns of the working directory; every experiment carries MLflow 3's kind tag, also
    one created before the tag (or by someone else) without a kind."""
    monkeypatch.chdir(tmp_path)
    kind = ("mlflow.experimentKind", "custom_model_development")
    uri = f"sqlite:///{tmp_path / 'named.db'}"
    cfg = load_config(smoke_experiment(), [f"tracking.tracking_uri={uri}"])
    run = run_tree.open_variant_run(cfg, "hpo", "tiny-bert", "hpo_tiny-bert", "abc")
    assert run is not None
    client = MlflowClient(uri)
    experiment = client.get_experiment(run.experiment_id)
    assert experiment.artifact_location == (tmp_path / "outputs" / "t" / "mlartifacts").as_uri()
    assert kind in experiment.tags.items()
    tracking.log_artifact(run, str(smoke_experiment()))
    assert (tmp_path / "outputs" / "t" / "mlartifacts").is_dir()
    assert not (tmp_path / "mlruns").exists()

    older = client.create_experiment("older")  # no kind tag
    assert tracking.experiment_id(uri, "older") == older
    assert kind in client.get_experiment(older).tags.items()
    chosen = client.create_experiment("chosen", tags={kind[0]: "genai_development"})
    assert tracking.experiment_id(uri, "chosen") == chosen
    assert client.get_experiment(chosen).tags[kind[0]] == "genai_development"  # left alone

    # Where to look: MLflow 3's UI opens the GenAI overview unless the URL asks for the runs.
    line = tracking.ui_line(cfg)
    assert line == (
        f"mlflow: `mlflow ui --backend-store-uri {uri}`, then "
        f"http://127.0.0.1:5000/#/experiments/{run.experiment_id}?workflowType=machine_learning"
    )
    assert tracking.ui_line(load_config(smoke_experiment(), ["tracking.enabled=false"])) is None


def test_only_the_tracking_module_imports_mlflow() -> None:
    package = Path(ray_pipeline.__file__).parent
    importers = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                importers.append(path.name)
    assert set(importers) == {"tracking.py"}


def test_cut_off_trials_end_killed_whatever_they_said(smoke_experiment: MakeExp) -> None:
    cfg = load_config(smoke_experiment())
    parent = run_tree.open_variant_run(cfg, "hpo", "tiny-bert", "hpo_tiny-bert", "abc")
    assert parent is not None
    trial = tracking.open_child(parent, "trial", "t0", trial=0)
    fold = tracking.open_child(trial, "fold", "t0f0", trial=0, fold=0)
    tracking.end(trial, "FAILED")  # its trainer was torn down by the interruption
    run_tree.end_trial_runs(parent, [0], "KILLED")
    tracking.end(trial, "FAILED", only_if_running=True)  # a late write does not undo it
    client = MlflowClient(parent.tracking_uri)
    assert client.get_run(trial.run_id).info.status == "KILLED"
    assert client.get_run(fold.run_id).info.status == "KILLED"


_ORPHAN = """
import sys
from ray_pipeline import run_tree, tracking
from ray_pipeline.loading import load_config

cfg = load_config(sys.argv[1])
parent = run_tree.open_variant_run(cfg, "hpo", "tiny-bert", "hpo_tiny-bert", "abc")
trial = tracking.open_child(parent, "trial", "hpo_tiny-bert_trial_0", trial=0)
print(parent.run_id, trial.run_id, flush=True)
"""


@pytest.mark.slow  # a child Python process
def test_runs_a_stopped_driver_left_running_are_ended_by_the_next_run(
    smoke_experiment: MakeExp,
) -> None:
    path = smoke_experiment()
    cfg = load_config(path)
    # A driver that opens a variant run and a trial run, then is gone without ending them.
    child = subprocess.run(
        [sys.executable, "-c", _ORPHAN, str(path)], capture_output=True, text=True, check=True
    )
    left = child.stdout.split()
    # A live run's (this process's) and a run without a driver tag (an older version's).
    live = run_tree.open_variant_run(cfg, "hpo", "tiny-bert", "hpo_tiny-bert_v2", "abc")
    assert live is not None and live.driver == process_identity()
    client = MlflowClient(live.tracking_uri)
    untagged = client.create_run(live.experiment_id, run_name="older").info.run_id
    assert all(client.get_run(r).info.status == "RUNNING" for r in [*left, untagged])
    # Its trial run carries the driver's identity: this machine, the child's pid.
    driver = client.get_run(left[1]).data.tags[tracking.DRIVER_TAG]
    machine, _, pid = driver.rpartition("/")
    assert machine == process_identity().rpartition("/")[0] and int(pid) != os.getpid()

    gone = tracking.end_orphaned_runs(cfg)
    assert gone == [driver]
    assert [client.get_run(r).info.status for r in left] == ["KILLED", "KILLED"]
    assert client.get_run(live.run_id).info.status == "RUNNING"
    assert client.get_run(untagged).info.status == "RUNNING"
    assert tracking.end_orphaned_runs(cfg) == []  # nothing left to end


def test_a_benchmark_on_another_device_or_precision_has_a_run_of_its_own(
    smoke_experiment: MakeExp,
) -> None:
    cfg = load_config(smoke_experiment())
    origin = run_tree.Origin(
        backbone="tiny-bert",
        variant="hpo_tiny-bert",
        study_key_hash="abc",
        trial=2,
        trial_key_hash="def",
    )
    runs = {}
    for device, precision in [("cpu", "fp32"), ("cpu", "bf16"), ("cuda", "bf16")]:
        with tracking.tracked(run_tree.open_benchmark_run(cfg, origin, device, precision)) as run:
            assert run is not None
            params = {"device": device, "precision": precision}
            tracking.log(run, metrics={"p95_ms_b1": 1.0}, params=params)
        runs[(device, precision)] = run.run_id
    assert len(set(runs.values())) == 3
    # The same device and precision again: the same run (params unchanged, no MLflow error).
    again = run_tree.open_benchmark_run(cfg, origin, "cpu", "bf16")
    assert again is not None and again.run_id == runs[("cpu", "bf16")]
    tracking.log(again, params={"device": "cpu", "precision": "bf16"})
    tracking.end(again)
    client = MlflowClient(again.tracking_uri)
    assert {client.get_run(r).info.status for r in runs.values()} == {"FINISHED"}
