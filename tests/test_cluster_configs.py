"""Cluster support without a cluster: every launcher YAML under cluster/ passes Ray's own
validation (what `ray up` runs) and is closed by default (token authentication on every node
with a token from outside the checkout, MLflow with authentication and its credentials file on
every node, no secret committed); and the shared-storage verdict."""

from __future__ import annotations

import copy
import re
import subprocess
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
    authentication turned off or not turned on where a node starts (Ray 2.60 leaves it off for
    `ray start`), an MLflow server without authentication or with a password written into the
    config."""
    problems = []
    for command in commands:
        if "ray start" in command and not _token_auth_on(command):
            problems.append(f"a node starts without RAY_AUTH_MODE=token: {command}")
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


def _token_auth_on(command: str) -> bool:
    """Whether ``RAY_AUTH_MODE=token`` is in the environment of the command's `ray start`
    (set right before it, or exported earlier in the same command line)."""
    before = command.split("ray start", 1)[0]
    return re.search(r"(^|[\s;&(])(export\s+)?RAY_AUTH_MODE=token(\s|;|$)", before) is not None


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
        "ulimit -n 65536; ray start --head --port=6379",
        "RAY_AUTH_MODE=tokens ray start --address=$RAY_HEAD_IP:6379",
        "ray start --address=$RAY_HEAD_IP:6379; export RAY_AUTH_MODE=token",
    ]
    found = [closed_by_default([command]) for command in opened]
    assert all(found), found
    assert (
        closed_by_default(
            [
                "ulimit -n 65536; RAY_AUTH_MODE=token ray start --head --port=6379",
                "export RAY_AUTH_MODE=token; ray start --address=$RAY_HEAD_IP:6379",
                'MLFLOW_AUTH_ADMIN_PASSWORD="$(cat ~/.mlflow-auth/password)" mlflow server'
                ' --app-name basic-auth --host "$(hostname -I)"',
            ]
        )
        == []
    )


def _start_commands(config: dict[str, Any]) -> dict[str, list[str]]:
    """The `ray start` commands of each node a launcher config starts, by node type and role:
    the head type's from ``head_start_ray_commands``; workers of every type (the head's own
    type too, as the local provider's single type) from ``worker_start_ray_commands`` (Ray's
    schema has no start commands per type)."""
    from ray.autoscaler._private.util import prepare_config

    prepared = prepare_config(copy.deepcopy(config))
    roles = {}
    for node_type, spec in prepared["available_node_types"].items():
        if node_type == prepared["head_node_type"]:
            roles[f"{node_type} (head)"] = prepared["head_start_ray_commands"]
        if node_type != prepared["head_node_type"] or spec.get("max_workers", 0) > 0:
            roles[f"{node_type} (worker)"] = prepared["worker_start_ray_commands"]
    return {
        role: [str(c) for c in commands if "ray start" in str(c)]
        for role, commands in roles.items()
    }


def token_auth_problems(config: dict[str, Any]) -> list[str]:
    """Why the nodes of a launcher config would not all run with Ray's token authentication
    and one token: a node type whose `ray start` lacks ``RAY_AUTH_MODE=token``, or Ray's
    token file (~/.ray/auth_token on each node) not copied from outside the repository."""
    problems = [
        f"{role}: {'no `ray start`' if not starts else 'RAY_AUTH_MODE=token missing'}"
        for role, starts in _start_commands(config).items()
        if not starts or not all(_token_auth_on(c) for c in starts)
    ]
    user = config["auth"]["ssh_user"]
    source = (config.get("file_mounts") or {}).get(f"/home/{user}/.ray/auth_token")
    if source is None:
        problems.append(f"file_mounts: no /home/{user}/.ray/auth_token (Ray's token file)")
    elif not str(source).startswith(("~/", "/")) or Path(source).expanduser().is_relative_to(REPO):
        problems.append(
            f"file_mounts: the token comes from {source}, not from outside the checkout"
        )
    return problems


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_every_node_starts_with_token_auth_and_the_same_token(path: Path) -> None:
    assert token_auth_problems(yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_the_token_auth_check_finds_a_node_without_it(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        broken = copy.deepcopy(config)
        broken[key] = [c.replace("RAY_AUTH_MODE=token ", "") for c in broken[key]]
        assert len(token_auth_problems(broken)) >= 1, key
    unmounted = copy.deepcopy(config)
    unmounted["file_mounts"] = {"/home/ubuntu/ray_pipeline": "."}
    assert token_auth_problems(unmounted) == [
        "file_mounts: no /home/ubuntu/.ray/auth_token (Ray's token file)"
    ]
    in_repo = copy.deepcopy(config)
    in_repo["file_mounts"]["/home/ubuntu/.ray/auth_token"] = "./cluster/auth_token"
    assert len(token_auth_problems(in_repo)) == 1


COMMITTED_SECRETS = re.compile(
    r"[0-9a-fA-F]{32,}"  # a Ray token (`ray get-auth-token --generate`: 64 hex digits)
    r"|RAY_AUTH_TOKEN=(?![\"']?[$<]|\.\.\.)\S"  # a token value
    r"|mlflow_tracking_password\s*=\s*(?!%s|[$<]|\.\.\.)\S"  # an MLflow credentials password
)
"""A secret written into a committed file (a value from a variable or a command, ``<...>`` or
``...`` is not one)."""


def test_no_token_or_password_is_committed() -> None:
    """Nothing that sets up or reaches a cluster holds Ray's token or the MLflow password."""
    files = [
        p for folder in ("cluster", "scripts") for p in (REPO / folder).rglob("*") if p.is_file()
    ]
    files.append(REPO / "docs" / "cluster.md")
    assert not [p for p in files if p.name in {"auth_token", "credentials"}]
    leaked = {
        str(p.relative_to(REPO)): m.group(0)
        for p in files
        if p.suffix in {".yaml", ".yml", ".sh", ".md", ".py", ""}
        for m in [COMMITTED_SECRETS.search(p.read_text(errors="replace"))]
        if m is not None
    }
    assert leaked == {}
    assert COMMITTED_SECRETS.search("RAY_AUTH_TOKEN=s3cr3t ray start")
    assert COMMITTED_SECRETS.search("token: " + "ab12" * 16)
    assert COMMITTED_SECRETS.search("mlflow_tracking_password = hunter2")
    for fine in ('RAY_AUTH_TOKEN="$(cat ~/.ray/auth_token)"', "RAY_AUTH_TOKEN=<not-it>"):
        assert not COMMITTED_SECRETS.search(fine)


@pytest.mark.slow  # runs the config's shell commands
@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_mlflow_reads_the_credentials_file_the_head_writes_and_workers_get(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head's setup writes MLflow's own credentials file from the generated password, mode
    600; every worker gets it (cluster_synced_files); MLflow's client reads it there, with no
    credential in any process's environment or in a job's runtime_env."""
    from mlflow.utils.credentials import read_mlflow_creds

    config = yaml.safe_load(path.read_text())
    user = config["auth"]["ssh_user"]
    assert f"/home/{user}/.mlflow/credentials" in config["cluster_synced_files"]
    writes = [c for c in config["head_setup_commands"] if re.search(r"~/\.mlflow(?!-)", c)]
    assert writes, "the head's setup writes ~/.mlflow/credentials"
    (tmp_path / ".mlflow-auth").mkdir()
    (tmp_path / ".mlflow-auth" / "password").write_text("generated-pw-7f1c\n")
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for command in writes:
        subprocess.run(["bash", "-c", command], env=env, check=True, timeout=30)
    credentials = tmp_path / ".mlflow" / "credentials"
    assert credentials.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    creds = read_mlflow_creds()
    assert (creds.username, creds.password) == ("admin", "generated-pw-7f1c")
