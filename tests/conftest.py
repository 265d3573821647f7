"""Shared fixtures: the repository's config directory and a helper to write YAML files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "config"
SMOKE = CONFIG_DIR / "experiment" / "smoke.yaml"

WriteYaml = Callable[[str, Any], Path]


@pytest.fixture
def write_yaml(tmp_path: Path) -> WriteYaml:
    """Write a mapping (or raw text) as a YAML file under tmp_path and return its path."""

    def write(name: str, content: Any) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def smoke_experiment(write_yaml: WriteYaml, tmp_path: Path) -> Callable[..., Path]:
    """An experiment file in tmp_path that includes the shipped smoke sections.

    Keyword arguments become top-level sections merged over the includes; outputs go to
    tmp_path/outputs.
    """

    def make(name: str = "exp.yaml", **sections: Any) -> Path:
        doc: dict[str, Any] = {
            "include": {
                "data": str(CONFIG_DIR / "data" / "tiny_reviews.yaml"),
                "model": str(CONFIG_DIR / "model" / "tiny_bert.yaml"),
                "hpo": str(CONFIG_DIR / "hpo" / "smoke.yaml"),
            },
            "experiment": {"name": "t"},
            "outputs_root": "outputs",
        }
        doc.update(sections)
        return write_yaml(name, doc)

    return make
