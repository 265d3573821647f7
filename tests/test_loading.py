"""Config loading: composition, overrides, path resolution and error reporting."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_pipeline.errors import ConfigError
from ray_pipeline.loading import load_config, parse_override
from ray_pipeline.paths import DATA_CACHE_ENV
from tests.conftest import CONFIG_DIR, DEMO, MakeExp, WriteYaml


def _problems(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return {p.where: p.render() for p in exc.value.problems}


def test_inline_section_is_deep_merged_over_include(smoke_experiment: MakeExp) -> None:
    cfg = load_config(smoke_experiment(hpo={"num_samples": 7, "training": {"epochs": 2}}))
    assert cfg.hpo.num_samples == 7
    assert cfg.hpo.training.epochs == 2
    assert cfg.hpo.training.max_length == 64  # kept from hpo/smoke.yaml
    assert cfg.hpo.k_folds == 2


def test_overrides_are_typed_and_win(smoke_experiment: MakeExp) -> None:
    cfg = load_config(
        smoke_experiment(),
        [
            "hpo.num_samples=5",
            "hpo.run.mode=force_new",
            "model.backbones.0.name=other",
            "benchmark.benchmarking.batch_sizes=[2, 4]",
            "selection.latency_batch_size=2",
            "selection.max_latency_ms=null",
        ],
    )
    assert cfg.hpo.num_samples == 5
    assert cfg.hpo.run.mode == "force_new"
    assert cfg.model.backbones[0].name == "other"
    assert cfg.benchmark.benchmarking.batch_sizes == [2, 4]
    # A key beneath a null creates the mapping.
    cfg = load_config(smoke_experiment(), ["selection.objective.metric=accuracy"])
    assert cfg.selection.objective is not None
    assert cfg.selection.objective.metric == "accuracy"


def test_selection_batch_size_must_be_benchmarked(smoke_experiment: MakeExp) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(smoke_experiment(), ["benchmark.benchmarking.batch_sizes=[2, 4]"])
    message = str(info.value)
    assert (
        "selection.latency_batch_size 1 is not one of benchmark.benchmarking.batch_sizes" in message
    )
    assert "(got " not in message  # no dump of the whole config


def test_unknown_key_wrong_type_and_bad_mode_reported_together(smoke_experiment: MakeExp) -> None:
    path = smoke_experiment(hpo={"num_sample": 3, "k_folds": "two", "run": {"mode": "always"}})
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    problems = _problems(exc)
    assert {"hpo.num_sample", "hpo.k_folds", "hpo.run.mode"} <= set(problems)
    assert "did you mean 'num_samples'" in problems["hpo.num_sample"]
    assert "'two'" in problems["hpo.k_folds"]
    assert "reuse_if_exists" in problems["hpo.run.mode"]
    assert all(str(path) in text for text in problems.values())
    assert exc.value.exit_code == 2


def test_a_final_source_trial_needs_its_variant(smoke_experiment: MakeExp) -> None:
    with pytest.raises(ConfigError, match="trial needs variant"):
        load_config(smoke_experiment(final_training={"source": {"trial": 3}}))


def test_removed_keys_say_what_to_do_instead(smoke_experiment: MakeExp) -> None:
    path = smoke_experiment(
        benchmark={
            "benchmarking": {"benchmark_all_variants": False},
            "output": {"filename": "benchmark.json"},
        }
    )
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    problems = _problems(exc)
    assert (
        "benchmark_strategy: latest_only"
        in problems["benchmark.benchmarking.benchmark_all_variants"]
    )
    assert "always written to <variant>/benchmark.json" in problems["benchmark.output"]
    assert exc.value.exit_code == 2
    with pytest.raises(ConfigError) as exc:  # set on the command line: named as its source
        load_config(smoke_experiment("plain.yaml"), ["benchmark.output.filename=x.json"])
    assert str(exc.value).splitlines()[-1].startswith("  - command line: benchmark.output:")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"type": "float", "low": 1.0, "high": 0.1}, "low <= high must hold"),
        ({"type": "int", "low": 5, "high": 2}, "low <= high must hold"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log-scale range needs low > 0"),
        ({"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1}, "step and log"),
        ({"type": "categorical", "choices": []}, "at least 1 item"),
        ({"type": "gaussian", "low": 0, "high": 1}, "does not match any of the expected tags"),
    ],
)
def test_bad_search_space(
    smoke_experiment: MakeExp, spec: dict[str, object], expected: str
) -> None:
    path = smoke_experiment(hpo={"search_space": {"learning_rate": spec}})
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    found = [t for w, t in _problems(exc).items() if w.startswith("hpo.search_space.learning_rate")]
    assert any(expected in text for text in found), found


def test_unknown_hyperparameter_names_the_choices(smoke_experiment: MakeExp) -> None:
    spec = {"type": "float", "low": 0.0, "high": 0.5}
    with pytest.raises(ConfigError) as exc:
        load_config(smoke_experiment(hpo={"search_space": {"dropout_rate": spec}}))
    assert "unknown hyperparameter(s) dropout_rate; choose from learning_rate" in str(exc.value)


@pytest.mark.parametrize(
    ("section", "override", "where"),
    [
        ("selection", "selection.run.mode=resume_if_incomplete", "selection.run.mode"),
        ("benchmark", "benchmark.run.mode=resume_if_incomplete", "benchmark.run.mode"),
        ("final", "final_training.run.mode=sometimes", "final_training.run.mode"),
    ],
)
def test_run_modes_are_checked_per_stage(
    smoke_experiment: MakeExp, section: str, override: str, where: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(smoke_experiment(), [override])
    assert where in _problems(exc), section


def test_malformed_yaml_names_file_and_line(write_yaml: WriteYaml) -> None:
    path = write_yaml("broken.yaml", "experiment:\n  name: x\nhpo: [unclosed\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    text = str(exc.value)
    assert str(path) in text and "malformed YAML: line 4" in text


def test_top_level_must_be_a_mapping(write_yaml: WriteYaml) -> None:
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write_yaml("list.yaml", "- a\n- b\n"))


def test_missing_config_and_missing_include(write_yaml: WriteYaml, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    path = write_yaml(
        "exp.yaml",
        {
            "include": {"hpo": "missing/hpo.yaml", "data": "x.yaml", "bogus": "y.yaml"},
            "experiment": {"name": "x"},
        },
    )
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    problems = _problems(exc)
    assert "file not found" in problems["include.hpo"]
    assert "missing/hpo.yaml" in problems["include.hpo"]
    assert "unknown section" in problems["include.bogus"]
    # A missing include is reported once, not again as "required key is missing".
    assert "hpo" not in problems
    assert "model" in problems  # not included at all: still required


def test_bad_override_syntax(smoke_experiment: MakeExp) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(smoke_experiment(), ["hpo.num_samples", "hpo.seed.deeper=1"])
    text = str(exc.value)
    assert "expected key=value" in text
    assert "hpo.seed is not a mapping" in text
    with pytest.raises(ValueError):
        parse_override("=3")


def test_paths_resolve_against_the_file_that_set_them(
    smoke_experiment: MakeExp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path / "..")
    cfg = load_config(smoke_experiment())
    assert cfg.data.train_file == CONFIG_DIR / "data" / "tiny_reviews" / "train.csv"
    assert cfg.outputs_root == tmp_path / "outputs"  # set in the experiment file
    cfg = load_config(smoke_experiment(), ["outputs_root=elsewhere"])
    assert cfg.outputs_root == tmp_path.parent / "elsewhere"  # command line: working dir


def test_default_outputs_root_is_under_the_working_directory(
    write_yaml: WriteYaml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(DEMO).outputs_root == tmp_path / "outputs"


def test_data_cache_placeholder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_CACHE_ENV, str(tmp_path / "cache"))
    cfg = load_config(DEMO)
    assert cfg.data.train_file == tmp_path / "cache" / "small_fine_foods" / "train.csv"


@pytest.mark.parametrize("bad", ["..", "../escape", "/abs", "a/b", "a\\b", "nul\x00", ""])
def test_names_that_escape_the_outputs_root_are_rejected(
    smoke_experiment: MakeExp, bad: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(smoke_experiment(), [f"model.backbones.0.name={bad!r}"])
    assert "model.backbones.0.name" in _problems(exc)
    with pytest.raises(ConfigError) as exc:
        load_config(smoke_experiment(), [f"hpo.checkpoint.study_name={bad!r}"])
    assert "hpo.checkpoint.study_name" in _problems(exc)


def test_storage_path_must_stay_inside(smoke_experiment: MakeExp) -> None:
    with pytest.raises(ConfigError, match="stay inside"):
        load_config(smoke_experiment(), ["hpo.checkpoint.storage_path='../{study_name}/s.db'"])


def test_backbone_needs_exactly_one_source(smoke_experiment: MakeExp) -> None:
    with pytest.raises(ConfigError, match="exactly one of hub, path, package, random"):
        load_config(smoke_experiment(), ["model.backbones.0.hub=bert-base-uncased"])


def test_a_different_type_replaces_instead_of_merging(smoke_experiment: MakeExp) -> None:
    override = {"type": "categorical", "choices": [1e-4, 3e-4]}
    cfg = load_config(smoke_experiment(hpo={"search_space": {"learning_rate": override}}))
    spec = cfg.hpo.search_space["learning_rate"]
    assert spec.type == "categorical"
    partial = load_config(smoke_experiment(hpo={"search_space": {"learning_rate": {"high": 5e-3}}}))
    merged = partial.hpo.search_space["learning_rate"]
    assert merged.type == "float" and merged.high == 5e-3 and merged.log  # rest kept


@pytest.mark.parametrize(
    ("name", "spec", "expected"),
    [
        (
            "learning_rate",
            {"type": "float", "low": -1.0, "high": 0.1, "log": False},
            "greater than 0",
        ),
        ("warmup_ratio", {"type": "float", "low": 0.0, "high": 1.5}, "less than 1"),
        ("batch_size", {"type": "categorical", "choices": [8, 0]}, "greater than or equal to 1"),
        ("epochs", {"type": "float", "low": 1.0, "high": 3.0}, "use type: int or categorical"),
        ("batch_size", {"type": "categorical", "choices": ["big"]}, "valid integer"),
    ],
)
def test_search_space_values_must_fit_the_training_field(
    smoke_experiment: MakeExp, name: str, spec: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(smoke_experiment(hpo={"search_space": {name: spec}}))
    assert expected in _problems(exc)["hpo.search_space"]


def test_categorical_choices_take_the_field_type(write_yaml: WriteYaml) -> None:
    # YAML reads 1e-4 as a string; the choices still come out as floats.
    hpo = write_yaml(
        "hpo.yaml",
        "search_space:\n  learning_rate: {type: categorical, choices: [1e-4, 3e-4]}\n"
        "  batch_size: {type: categorical, choices: ['8', 16]}\n",
    )
    path = write_yaml(
        "exp.yaml",
        {
            "include": {
                "hpo": str(hpo),
                "data": str(CONFIG_DIR / "data" / "tiny_reviews.yaml"),
                "model": str(CONFIG_DIR / "model" / "tiny_bert.yaml"),
            },
            "experiment": {"name": "x"},
        },
    )
    space = load_config(path).hpo.search_space
    assert space["learning_rate"].choices == [1e-4, 3e-4]  # type: ignore[union-attr]
    assert space["batch_size"].choices == [8, 16]  # type: ignore[union-attr]
