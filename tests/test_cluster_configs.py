"""Cluster support without a cluster: every launcher YAML under cluster/ passes Ray's own
validation (what `ray up` runs), and the shared-storage verdict."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

CLUSTER_FILES = sorted((REPO / "cluster").glob("*.yaml"))


def _validate(config: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_there_are_cluster_configs() -> None:
    assert {p.name for p in CLUSTER_FILES} >= {"onprem.yaml", "aws-gpu.yaml"}


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_config_passes_ray_schema(path: Path) -> None:
    _validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_schema_check_is_real(path: Path) -> None:
    import jsonschema

    broken = yaml.safe_load(path.read_text())
    broken["head_start_ray_command"] = broken.pop("head_start_ray_commands")  # a typo
    with pytest.raises(jsonschema.ValidationError):
        _validate(broken)


def test_nodes_that_cannot_read_the_probe_are_named() -> None:
    from ray_pipeline.cluster import unseen_by

    readings = {"node-b": None, "node-a": "token", "node-c": "stale"}
    assert unseen_by(readings, "token") == ["node-b", "node-c"]
    assert unseen_by({"node-a": "token"}, "token") == []


def _commands(config: dict[str, Any]) -> list[str]:
    """Every shell command a launcher config runs on its nodes."""
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    return [str(c) for key in keys for c in config.get(key) or []]


def closed_by_default(commands: list[str]) -> list[str]:
    """What in ``commands`` opens a door: a service bound to every interface, Ray's token
    authentication turned off, an MLflow server without authentication or with a password
    written into the config."""
    problems = []
    for command in commands:
        if "0.0.0.0" in command or "--dashboard-host" in command:
            problems.append(f"binds to every interface: {command}")
        if "RAY_AUTH_MODE=disabled" in command.replace(" ", "") or "--disable-auth" in command:
            problems.append(f"turns Ray's token authentication off: {command}")
        if "mlflow server" in command:
            if "--app-name basic-auth" not in command:
                problems.append(f"MLflow without authentication: {command}")
            if "--host" not in command:
                problems.append(f"MLflow on its default host, not the private address: {command}")
        for secret in (
            "MLFLOW_AUTH_ADMIN_PASSWORD=",
            "MLFLOW_TRACKING_PASSWORD=",
            "admin_password",
        ):
            value = command.split(secret, 1)[1] if secret in command else ""
            if secret in command and not value.lstrip().startswith(('"$(', "$(", "$")):
                problems.append(f"a credential written into the config: {command}")
    return problems


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_config_is_closed_by_default(path: Path) -> None:
    commands = _commands(yaml.safe_load(path.read_text()))
    assert any("mlflow server" in c for c in commands), "the configs start MLflow on the head"
    assert closed_by_default(commands) == []


def test_the_closed_by_default_check_finds_open_doors() -> None:
    opened = [
        "ray start --head --dashboard-host=0.0.0.0",
        "RAY_AUTH_MODE=disabled ray start --head",
        "nohup mlflow server --host 10.0.0.1 --port 5000",
        "nohup mlflow server --app-name basic-auth --port 5000",
        "MLFLOW_AUTH_ADMIN_PASSWORD=hunter2 mlflow server --app-name basic-auth --host 10.0.0.1",
    ]
    found = [closed_by_default([command]) for command in opened]
    assert all(found), found
    assert (
        closed_by_default(
            [
                "ray start --head --port=6379",
                'MLFLOW_AUTH_ADMIN_PASSWORD="$(cat ~/.mlflow-auth/password)" mlflow server'
                ' --app-name basic-auth --host "$(hostname -I)"',
            ]
        )
        == []
    )
