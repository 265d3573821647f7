"""The front door (issue 37): input that used to pass ``validate`` and fail later, or end in a
traceback, is refused with exit 2 and a message naming the key or file, the bad value and the
fix, before anything is written. Each case runs the CLI in-process; none needs Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ray_pipeline.cli import main
from ray_pipeline.loading import parse_override
from ray_pipeline.schema import IntParam
from ray_pipeline.schema.search import grid_values
from tests.conftest import CONFIG_DIR, MakeExp, WriteYaml

Capsys = pytest.CaptureFixture[str]


def _refused(capsys: Capsys, argv: list[str], *fragments: str) -> str:
    """``argv`` exits 2 with every fragment in its error output (which it returns)."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _validate(path: Path, *overrides: str) -> list[str]:
    return ["validate", "--config", str(path), *overrides]


# --------------------------------------------------------------- 1. the search space


@pytest.mark.parametrize("step", ["0", "-0.01"])
def test_a_float_step_must_be_positive(
    smoke_experiment: MakeExp, capsys: Capsys, step: str
) -> None:
    entry = f"hpo.search_space.weight_decay={{type: float, low: 0.0, high: 0.1, step: {step}}}"
    err = _refused(capsys, _validate(smoke_experiment(), entry), "hpo.search_space.weight_decay")
    assert "step must be > 0" in err and f"step={float(step):g}" in err


def test_a_huge_int_range_is_counted_not_enumerated(
    smoke_experiment: MakeExp, capsys: Capsys
) -> None:
    huge = 10**15  # a list of its values would not fit in any memory
    entry = f"hpo.search_space.gradient_accumulation_steps={{type: int, low: 1, high: {huge}}}"
    assert main(_validate(smoke_experiment(), entry)) == 0, capsys.readouterr().err
    values = grid_values(IntParam(type="int", low=0, high=huge, step=2))
    assert values is not None and len(values) == huge // 2 + 1 and values[-1] == huge


# --------------------------------------------------------------- 2. seeds


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["data.seed=-1", "data.max_train_examples=100"], "data.seed"),
        (["hpo.seed=-1"], "hpo.seed"),
        (["hpo.seed=4294967296"], "hpo.seed"),
    ],
)
def test_seeds_lie_in_numpys_range(
    smoke_experiment: MakeExp, capsys: Capsys, overrides: list[str], key: str
) -> None:
    err = _refused(capsys, _validate(smoke_experiment(), *overrides), key, "[0, 2**32)")
    assert "rare" not in err


# --------------------------------------------------------------- 3. file encodings


def _ner_experiment(write_yaml: WriteYaml, tmp_path: Path, train: Path) -> Path:
    """The NER smoke experiment (random tiny BERT) on ``train``; outputs under tmp_path."""
    data = {
        "task": "token_classification",
        "format": "conll",
        "train_file": str(train),
        "test_file": str(CONFIG_DIR / "data" / "tiny_ner" / "test.conll"),
    }
    return write_yaml(
        "ner.yaml",
        {
            "include": {
                "model": str(CONFIG_DIR / "model" / "tiny_bert_random.yaml"),
                "hpo": str(CONFIG_DIR / "hpo" / "smoke.yaml"),
            },
            "experiment": {"name": "ner"},
            "outputs_root": str(tmp_path / "outputs"),
            "data": data,
            "hpo": {"objective": {"metric": "entity_f1"}},
        },
    )


def _ner_train(tmp_path: Path, extra: bytes) -> Path:
    """The shipped NER training file with ``extra`` appended as a last sentence."""
    path = tmp_path / "train.conll"
    shipped = (CONFIG_DIR / "data" / "tiny_ner" / "train.conll").read_bytes()
    path.write_bytes(shipped.rstrip(b"\n") + b"\n\n" + extra)
    return path


def test_a_conll_file_that_is_not_utf8_names_file_and_line(
    write_yaml: WriteYaml, tmp_path: Path, capsys: Capsys
) -> None:
    train = _ner_train(tmp_path, b"Caf\xe9 NNP O B-LOC\nok NN O O\n")
    line = len(train.read_bytes().splitlines()) - 1
    exp = _ner_experiment(write_yaml, tmp_path, train)
    _refused(capsys, _validate(exp), f"{train}:{line}", "not UTF-8", "0xe9")
    assert not (tmp_path / "outputs").exists()


def test_a_csv_with_a_byte_order_mark_reads(smoke_experiment: MakeExp, tmp_path: Path) -> None:
    shipped = CONFIG_DIR / "data" / "tiny_reviews" / "train.csv"
    train = tmp_path / "bom.csv"
    train.write_bytes(b"\xef\xbb\xbf" + shipped.read_bytes())
    assert main(_validate(smoke_experiment(), f"data.train_file={train}")) == 0


# --------------------------------------------------------------- 4. backbones


@pytest.mark.parametrize(
    "backbone, where, says",
    [
        ("{name: tiny-bert, path: /nonexistent}", "path", "/nonexistent does not exist"),
        ("{name: hubbed, hub: no-such-org/no-such-model}", "hub", "no-such-org/no-such-model"),
        ("{name: pkg, package: no_such_model_package}", "package", "cannot import"),
    ],
)
def test_a_backbone_that_cannot_be_loaded_is_refused(
    smoke_experiment: MakeExp, capsys: Capsys, backbone: str, where: str, says: str
) -> None:
    """The hub case runs with HF_HUB_OFFLINE=1 (tests/conftest.py): no download, no wait."""
    override = f"model.backbones=[{{name: tiny, random: {{model_type: bert}}}}, {backbone}]"
    _refused(capsys, _validate(smoke_experiment(), override), f"model.backbones[1].{where}", says)


def test_a_directory_without_a_saved_model_is_refused(
    smoke_experiment: MakeExp, tmp_path: Path, capsys: Capsys
) -> None:
    override = f"model.backbones=[{{name: empty, path: {tmp_path}}}]"
    _refused(
        capsys, _validate(smoke_experiment(), override), "model.backbones[0].path", "config.json"
    )


# --------------------------------------------------------------- 5. max_length


@pytest.mark.parametrize(
    "override, key",
    [
        ("benchmark.benchmarking.max_length=512", "benchmark.benchmarking.max_length"),
        ("hpo.training.max_length=512", "hpo.training.max_length"),
        ("hpo.search_space.max_length={type: int, low: 32, high: 256}", "hpo.search_space"),
        ("hpo.search_space.max_length={type: categorical, choices: [64, 129]}", "hpo.search_space"),
    ],
)
def test_max_length_fits_the_backbones_positions(
    smoke_experiment: MakeExp, capsys: Capsys, override: str, key: str
) -> None:
    err = _refused(capsys, _validate(smoke_experiment(), override), key, "tiny-bert", "128")
    assert "max_position_embeddings" in err


def test_max_length_at_the_limit_is_valid(smoke_experiment: MakeExp) -> None:
    fits = ["benchmark.benchmarking.max_length=128", "hpo.training.max_length=128"]
    assert main(_validate(smoke_experiment(), *fits)) == 0


# --------------------------------------------------------------- 6. outputs_root


def test_outputs_root_that_cannot_be_created_is_refused(
    smoke_experiment: MakeExp, tmp_path: Path, capsys: Capsys
) -> None:
    _refused(capsys, _validate(smoke_experiment(), "outputs_root=/dev/null/o"), "outputs_root")
    a_file = tmp_path / "file"
    a_file.write_text("")
    root = a_file / "outputs"
    _refused(capsys, _validate(smoke_experiment(), f"outputs_root={root}"), str(a_file))
    _refused(capsys, ["hpo", "--config", str(smoke_experiment()), f"outputs_root={a_file}"])
    assert main(_validate(smoke_experiment(), f"outputs_root={tmp_path / 'new' / 'deep'}")) == 0
    assert not (tmp_path / "new").exists()  # checked, not created


# --------------------------------------------------------------- 7. labels and tags


def _saved_dataset(tmp_path: Path, test_labels: list[Any]) -> Path:
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    train = {"text": ["good", "bad", "fine", "awful"] * 3, "label": [1, 0, 1, 0] * 3}
    test = {"text": [f"t{i}" for i in range(len(test_labels))], "label": test_labels}
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(train, features=features),
            "test": datasets.Dataset.from_dict(test, features=features),
        }
    ).save_to_disk(str(saved))
    return saved


def _hf_data(saved: Path) -> dict[str, Any]:
    return {
        "format": "huggingface",
        "hf_name": str(saved),
        "train_file": None,
        "test_file": None,
        "text_columns": ["text"],
        "label_column": "label",
    }


@pytest.mark.parametrize("bad", [-1, None])
def test_hugging_face_labels_outside_the_class_ids_are_refused(
    smoke_experiment: MakeExp, tmp_path: Path, capsys: Capsys, bad: int | None
) -> None:
    saved = _saved_dataset(tmp_path, [0, bad, 1])
    exp = smoke_experiment(data=_hf_data(saved))
    _refused(capsys, ["data", "inspect", "--config", str(exp)], f"{saved}[test] row 2", repr(bad))


def test_ner_tags_outside_the_iob_scheme_are_refused(
    write_yaml: WriteYaml, tmp_path: Path, capsys: Capsys
) -> None:
    train = _ner_train(tmp_path, b"Maria NNP O PER\nsmiled NN O O\n")
    line = len(train.read_bytes().splitlines()) - 1
    exp = _ner_experiment(write_yaml, tmp_path, train)
    _refused(capsys, _validate(exp), f"{train}:{line}", "'PER'", "B-PER")


def test_hugging_face_ner_tags_outside_the_iob_scheme_are_refused(
    write_yaml: WriteYaml, tmp_path: Path, capsys: Capsys
) -> None:
    import datasets

    tags = datasets.List(datasets.ClassLabel(names=["O", "PER"]))
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")), "tags": tags})
    rows = {"tokens": [["Maria", "smiled"], ["ok"]] * 4, "tags": [[1, 0], [0]] * 4}
    saved = tmp_path / "ner"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows, features=features)}
    ).save_to_disk(str(saved))
    exp = write_yaml(
        "hf_ner.yaml",
        {
            "include": {
                "model": str(CONFIG_DIR / "model" / "tiny_bert_random.yaml"),
                "hpo": str(CONFIG_DIR / "hpo" / "smoke.yaml"),
            },
            "experiment": {"name": "ner"},
            "outputs_root": str(tmp_path / "outputs"),
            "data": {
                "task": "token_classification",
                "format": "huggingface",
                "hf_name": str(saved),
                "text_columns": ["tokens"],
                "label_column": "tags",
            },
            "hpo": {"objective": {"metric": "entity_f1"}},
        },
    )
    _refused(capsys, ["data", "inspect", "--config", str(exp)], f"{saved}[train] row 1", "'PER'")


# --------------------------------------------------------------- 8. resources


@pytest.mark.parametrize(
    "key",
    [
        "resources.cpus_per_worker",
        "final_training.resources.cpus_per_worker",
        "benchmark.benchmarking.cpus_per_actor",
    ],
)
def test_a_sliver_of_a_cpu_is_refused(smoke_experiment: MakeExp, capsys: Capsys, key: str) -> None:
    _refused(capsys, _validate(smoke_experiment(), f"{key}=0.01"), key, "at least 0.1")
    assert main(_validate(smoke_experiment(), f"{key}=0.5")) == 0


def test_the_shipped_smoke_configs_stay_valid(tmp_path: Path, capsys: Capsys) -> None:
    for name in ("smoke.yaml", "smoke_ner.yaml"):
        exp = CONFIG_DIR / "experiment" / name
        assert main(_validate(exp, f"outputs_root={tmp_path}")) == 0, capsys.readouterr().err


# --------------------------------------------------------------- 9. data files validate reads


def test_validate_refuses_a_missing_local_data_file(
    smoke_experiment: MakeExp, tmp_path: Path, capsys: Capsys
) -> None:
    """``run`` refuses it when the search reads the data; ``validate`` refuses it too."""
    missing = tmp_path / "no_such" / "train.csv"
    exp = smoke_experiment()
    for key in ("train_file", "validation_file", "test_file"):
        _refused(capsys, _validate(exp, f"data.{key}={missing}"), f"data.{key}", str(missing))
    assert not (tmp_path / "outputs").exists()


def test_validate_leaves_data_cache_files_to_be_fetched(
    smoke_experiment: MakeExp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capsys
) -> None:
    """A file under ``{data_cache}`` (the demo's, fetched later) is no error for validate."""
    monkeypatch.setenv("RAY_PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    exp = smoke_experiment()
    assert main(_validate(exp, "data.train_file={data_cache}/later/train.csv")) == 0, (
        capsys.readouterr().err
    )
    # run reads the data before anything is written, and says how to fetch it
    _refused(
        capsys,
        ["hpo", "--config", str(exp), "data.train_file={data_cache}/later/train.csv"],
        "data.train_file",
        "fetch-demo",
    )
    assert not (tmp_path / "outputs").exists()


# --------------------------------------------------------------- 10. YAML alias bombs


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Billion laughs: each anchor repeats the one before ``width`` times (width**levels
    values once expanded, a few hundred characters written)."""
    rows = ["&l0 [" + ", ".join(["x"] * width) + "]"]
    rows += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(rows) + "]"


def test_a_yaml_alias_bomb_in_a_file_is_refused(
    smoke_experiment: MakeExp, tmp_path: Path, capsys: Capsys
) -> None:
    exp = smoke_experiment()
    text = exp.read_text(encoding="utf-8") + f"bomb: {_alias_bomb()}\n"
    exp.write_text(text, encoding="utf-8")
    _refused(capsys, ["run", "--config", str(exp)], str(exp), "100,000", "write the value out")
    assert not (tmp_path / "outputs").exists()


def test_a_yaml_alias_bomb_in_an_override_is_refused(
    smoke_experiment: MakeExp, tmp_path: Path, capsys: Capsys
) -> None:
    override = f"hpo.enqueue={_alias_bomb()}"
    err = _refused(capsys, ["run", "--config", str(smoke_experiment()), override], "100,000")
    assert "command line: hpo.enqueue=" in err and "write the value out" in err
    assert not (tmp_path / "outputs").exists()


def test_yaml_aliases_that_stay_small_still_load() -> None:
    """An anchor used many times is fine while the value it makes stays small."""
    loc, value = parse_override("hpo.enqueue=" + _alias_bomb(4, 4))
    assert loc == ("hpo", "enqueue") and value[3][0][0][0] == ["x"] * 4


def test_an_override_past_the_end_of_a_list_is_refused(
    smoke_experiment: MakeExp, capsys: Capsys
) -> None:
    """``model.backbones.5.name=x`` with one backbone: no such list position, no traceback."""
    err = _refused(capsys, _validate(smoke_experiment(), "model.backbones.5.name=x"))
    assert "command line: model.backbones.5: no such list position" in err
