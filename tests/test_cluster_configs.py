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
