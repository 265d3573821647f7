"""Every shipped config file validates, and every schema field is documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from ray_pipeline import schema
from ray_pipeline.identity import study_key
from ray_pipeline.loading import default_config_path, load_config, nested_models, read_yaml
from ray_pipeline.pipeline import write_resolved_config
from tests.conftest import CONFIG_DIR, DEMO

# Which schema section each stand-alone stage file holds.
SECTION_OF = {
    "hpo": "hpo",
    "data": "data",
    "model": "model",
    "benchmark.yaml": "benchmark",
    "best_model_selection.yaml": "selection",
    "final_training.yaml": "final_training",
}
STAGE_FILES = (
    "hpo/smoke.yaml",
    "hpo/prod.yaml",
    "benchmark.yaml",
    "best_model_selection.yaml",
    "final_training.yaml",
)


def _all_yaml() -> list[Path]:
    return sorted(CONFIG_DIR.rglob("*.yaml"))


def test_config_tree_is_not_empty() -> None:
    names = {p.relative_to(CONFIG_DIR).as_posix() for p in _all_yaml()}
    assert {*STAGE_FILES, "experiment/demo.yaml", "experiment/smoke.yaml"} <= names


@pytest.mark.parametrize("path", _all_yaml(), ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_every_config_file_validates(path: Path) -> None:
    rel = path.relative_to(CONFIG_DIR)
    if rel.parts[0] == "experiment":
        cfg = load_config(path)
        assert cfg.experiment.name == path.stem
        return
    key = SECTION_OF.get(rel.parts[0]) or SECTION_OF[rel.name]
    section = schema.SECTIONS[key].model_validate(read_yaml(path))
    # It survives being written out and read back, as in config.resolved.yaml.
    assert type(section).model_validate(section.model_dump(mode="json")) == section


@pytest.mark.parametrize(
    "path", sorted((CONFIG_DIR / "experiment").glob("*.yaml")), ids=lambda p: p.name
)
def test_resolved_config_is_the_same_experiment(path: Path, tmp_path: Path) -> None:
    """``config.resolved.yaml`` holds every value the run uses (no null that stands for another
    value) and, read back as a config, is the same experiment with the same study keys."""
    config = load_config(path, [f"outputs_root={tmp_path}"])
    written = write_resolved_config(config)
    doc = read_yaml(written)
    assert doc["selection"]["objective"]["metric"] == config.hpo.objective.metric
    assert doc["benchmark"]["run"]["mode"] is not None
    assert doc["tracking"]["experiment_name"] == config.experiment.name
    assert doc["hpo"]["training"]["eval_batch_size"] == 32
    again = load_config(written)
    assert again == config
    for backbone in config.model.backbones:
        assert study_key(again, backbone) == study_key(config, backbone)


def test_stage_files_have_a_run_section() -> None:
    for rel in STAGE_FILES:
        doc = read_yaml(CONFIG_DIR / rel)
        assert "mode" in doc["run"], rel


def test_default_config_is_the_demo() -> None:
    assert default_config_path().resolve() == DEMO.resolve()


def _models(cls: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    if cls not in seen:
        seen.add(cls)
        for field in cls.model_fields.values():
            for model in nested_models(field.annotation):
                _models(model, seen)
    return seen


def test_every_schema_field_is_documented() -> None:
    undocumented = [
        f"{cls.__name__}.{name}"
        for cls in _models(schema.PipelineConfig, set())
        for name, field in cls.model_fields.items()
        if not field.description
    ]
    assert undocumented == []
