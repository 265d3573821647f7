"""Closed by default (docs/cluster.md, "Security"): credentials written into a URI are masked
wherever the pipeline prints or records one; `scripts/submit.sh` sends no credential with a job
and no override of it reaches the head's shell; the state we load back is read with
``torch.load(weights_only=True)``. The cluster configs: tests/test_cluster_configs.py; a job on a
real cluster: tests/test_cluster_job.py."""

from __future__ import annotations

import ast
import json
import os
import shlex
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import ray_pipeline
from ray_pipeline import tracking
from ray_pipeline.console import redact, redacted
from ray_pipeline.errors import ConfigError
from ray_pipeline.loading import load_config
from ray_pipeline.pipeline import resolved_yaml, write_resolved_config
from ray_pipeline.schema.training import LrSchedule
from tests.conftest import REPO, SMOKE, MakeExp
from tests.processes import free_port

PASSWORD = "pw-marker-5e1b"
DB_URI = f"postgresql://mlflow:{PASSWORD}@db.internal:5432/mlflow"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (DB_URI, "postgresql://mlflow:***@db.internal:5432/mlflow"),
        ("mysql+pymysql://root:p@ss@db/x?ssl=1", "mysql+pymysql://root:***@db/x?ssl=1"),
        ("https://tok3n@mlflow.example.com", "https://***@mlflow.example.com"),
        (f"error: {DB_URI} refused; see http://h:5000", "error: postgresql://mlflow:***@"),
        ("http://10.0.0.10:5000", "http://10.0.0.10:5000"),
        ("sqlite:////runs/a@b/mlflow.db", "sqlite:////runs/a@b/mlflow.db"),
        ("s3://bucket/prefix@2024", "s3://bucket/prefix@2024"),
    ],
)
def test_redact_masks_the_credentials_of_every_uri_in_a_text(text: str, shown: str) -> None:
    assert redact(text).startswith(shown)
    assert "p@ss@" not in redact(text) and PASSWORD not in redact(text)
    assert redact(redact(text)) == redact(text)


def test_a_dumped_config_is_redacted_as_config_resolved_yaml_shows_it(
    smoke_experiment: MakeExp,
) -> None:
    config = load_config(smoke_experiment(), [f"tracking.tracking_uri={DB_URI}"])
    assert config.tracking.tracking_uri == DB_URI  # the run still connects with it
    shown = redacted(config.model_dump(mode="json"))
    assert shown["tracking"]["tracking_uri"] == "postgresql://mlflow:***@db.internal:5432/mlflow"
    assert PASSWORD not in json.dumps(shown)
    assert PASSWORD in json.dumps(config.model_dump(mode="json"))  # the check can fail
    # What config.resolved.yaml (also an MLflow artifact) and `validate --show` write.
    written = write_resolved_config(config).read_text(encoding="utf-8")
    assert "postgresql://mlflow:***@db.internal:5432/mlflow" in written
    assert PASSWORD not in written and resolved_yaml(config) == written


def test_tracking_errors_and_the_ui_line_show_no_password(
    smoke_experiment: MakeExp, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = f"http://admin:{PASSWORD}@127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConfigError) as unreachable:
        tracking.check_tracking(
            load_config(smoke_experiment(), [f"tracking.tracking_uri={server}"])
        )
    assert "MLflow server http://admin:***@127.0.0.1:" in str(unreachable.value)
    on_disk = load_config(
        smoke_experiment(), [f"tracking.tracking_uri={DB_URI}", "storage.uri=s3://b/p"]
    )
    with pytest.raises(ConfigError) as unshared:
        tracking.check_tracking_for_nodes(on_disk, nodes=2)
    assert "postgresql://mlflow:***@db.internal" in str(unshared.value)
    monkeypatch.setattr(tracking, "experiment_id", lambda *_: "7")  # no database here
    line = tracking.ui_line(on_disk)
    assert line is not None and "--backend-store-uri postgresql://mlflow:***@db" in line
    for message in (str(unreachable.value), str(unshared.value), line):
        assert PASSWORD not in message


def test_a_malformed_override_is_echoed_without_its_password() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(SMOKE, [f"tracking.tracking_uri {DB_URI}"])  # no "="
    assert "postgresql://mlflow:***@db.internal" in str(exc.value)
    assert PASSWORD not in str(exc.value)


def test_mlflow_params_and_tags_are_redacted(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.experiment_id(uri, "secrets")
    tags = tracking.run_tags("variant", stage="hpo", source=DB_URI)
    key = tracking.run_tags("variant", stage="hpo")
    run = tracking.open_run(uri, exp, "r", tags, key, "machine/1")
    tracking.log(run, params={"store": DB_URI})
    tracking.set_tags(run, failures=f"trial 1: cannot reach {DB_URI}")
    data = MlflowClient(uri).get_run(run.run_id).data
    values = [*data.params.values(), *data.tags.values()]
    assert "postgresql://mlflow:***@db.internal:5432/mlflow" in data.params.values()
    assert not [v for v in values if PASSWORD in v]


# --------------------------------------------------------------------------- scripts/submit.sh

HOSTILE = ["x=$(touch {marker})", "a;touch {marker}", "b=`touch {marker}`|cat", "it's fine"]
"""Overrides a shell would run something for, were they not quoted (``{marker}``: a file)."""


def _dry_run(tmp_path: Path, *args: str) -> tuple[dict[str, typing.Any], str]:
    """`scripts/submit.sh --dry-run ARGS` (from ``tmp_path``, with MLflow credentials in its
    environment): the job it would submit, and its stderr."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": PASSWORD,
    }
    argv = ["bash", str(REPO / "scripts" / "submit.sh"), "--dry-run", *args]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    job: dict[str, typing.Any] = json.loads(done.stdout)
    return job, done.stderr


@pytest.mark.slow  # runs the script and a shell
def test_submit_quotes_every_override_for_the_heads_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    overrides = [o.format(marker=marker) for o in HOSTILE]
    job, _ = _dry_run(tmp_path, str(SMOKE), *overrides)
    entrypoint = job["entrypoint"]
    want = ["python", "-m", "ray_pipeline", "run", "--config", str(SMOKE), *overrides]
    assert shlex.split(entrypoint) == want
    # Run it as Ray's job supervisor does (`Popen(entrypoint, shell=True)`: /bin/sh -c), with a
    # `python` that records the arguments it gets.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    got = tmp_path / "argv.json"
    stub = f'#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open("{got}", "w"))\n'
    (bin_dir / "python").write_text(stub)
    (bin_dir / "python").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}
    subprocess.run(entrypoint, shell=True, cwd=tmp_path, env=env, check=True, timeout=60)
    assert json.loads(got.read_text()) == want[1:]
    assert not marker.exists(), "an override ran on the head's shell"


@pytest.mark.slow  # runs the script
def test_submit_sends_no_mlflow_credentials_with_the_job(tmp_path: Path) -> None:
    job, stderr = _dry_run(tmp_path, str(SMOKE), "outputs_root=/mnt/shared/outputs")
    assert job["runtime_env"] == {"working_dir": "."}
    assert PASSWORD not in json.dumps(job)
    assert "not sent with the job" in stderr and PASSWORD not in stderr


# --------------------------------------------------------------------------- torch.load


def _torch_loads(path: Path) -> list[ast.Call]:
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
        ):
            calls.append(node)
    return calls


def _weights_only(call: ast.Call) -> bool:
    return any(
        k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


def test_every_torch_load_reads_weights_only() -> None:
    """torch < 2.6 (we allow >= 2.4) unpickles anything by default: a checkpoint on shared
    storage or in a bucket could run code in every process that resumes from it."""
    package = Path(ray_pipeline.__file__).parent
    calls = {path: _torch_loads(path) for path in sorted(package.rglob("*.py"))}
    assert sum(len(found) for found in calls.values()) >= 3  # fold state, best epoch, final
    unsafe = [
        f"{path.relative_to(package)}:{call.lineno}"
        for path, found in calls.items()
        for call in found
        if not _weights_only(call)
    ]
    assert unsafe == []
    opened = ast.parse("torch.load(p, map_location='cpu')").body[0]
    assert isinstance(opened, ast.Expr) and isinstance(opened.value, ast.Call)
    assert not _weights_only(opened.value)  # the check can fail


@pytest.mark.parametrize("schedule", typing.get_args(LrSchedule))
def test_the_training_state_we_save_loads_weights_only(schedule: str, tmp_path: Path) -> None:
    """What ``save_training_state`` writes (model, AdamW, every schedule, fp16's loss scaler)
    loads with ``weights_only=True``: no allowlist needed."""
    import torch

    from ray_pipeline.precision import Amp
    from ray_pipeline.schema import TrainingParams
    from ray_pipeline.training import make_optimizer

    model = torch.nn.Linear(4, 2)
    params = TrainingParams(lr_schedule=schedule, warmup_ratio=0.5)
    optimizer, scheduler = make_optimizer(model, params, total_steps=4)
    amp = Amp("fp16", torch.device("cpu"))
    amp.backward(model(torch.randn(3, 4)).sum())
    amp.step(optimizer, max_grad_norm=1.0)
    scheduler.step()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": amp.state_dict(),
    }
    torch.save(state, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert loaded["scaler"]["scale"] == state["scaler"]["scale"] > 0
    again = Amp("fp16", torch.device("cpu"))
    again.load_state_dict(loaded["scaler"])
    _, restored = make_optimizer(torch.nn.Linear(4, 2), params, total_steps=4)
    restored.load_state_dict(loaded["scheduler"])
    assert restored.get_last_lr() == scheduler.get_last_lr()
