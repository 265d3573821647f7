"""Assembling splits from a config, Hugging Face datasets, and seeded folds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ray_pipeline.data.draws import held_out
from ray_pipeline.data.examples import TextExamples
from ray_pipeline.data.splits import check_foldable, fold_indices, load_splits, take
from ray_pipeline.errors import ConfigError
from ray_pipeline.loading import load_config
from ray_pipeline.paths import DATA_CACHE_ENV
from tests.conftest import DEMO, SMOKE, MakeExp


def _texts(n: int, share_great: float = 0.6) -> TextExamples:
    labels = tuple("great" if i < n * share_great else "other" for i in range(n))
    return TextExamples(
        tuple((f"t{i}",) for i in range(n)), labels, tuple(f"f:{i}" for i in range(n))
    )


def test_load_splits_from_the_smoke_config() -> None:
    splits = load_splits(load_config(SMOKE).data)
    assert (len(splits.train), len(splits.test)) == (160, 46)
    assert splits.labels == ("great", "other")
    assert splits.label2id == {"great": 0, "other": 1}
    assert splits.rows_read == {"train": 160, "test": 46}


def test_test_split_is_carved_out_stratified_and_seeded(smoke_experiment: MakeExp) -> None:
    path = smoke_experiment()
    cfg = load_config(path, ["data.test_file=null", "data.test_size=0.25"])
    a = load_splits(cfg.data)
    b = load_splits(cfg.data)
    assert (len(a.train), len(a.test)) == (120, 40)
    assert a.test.origins == b.test.origins  # seeded
    assert set(a.train.origins).isdisjoint(a.test.origins)
    assert "test" not in a.rows_read and "25% of" in a.sources["test"]
    other = load_splits(load_config(path, ["data.test_file=null", "data.seed=7"]).data)
    assert other.test.origins != a.test.origins


def test_subsetting_is_stratified_and_in_file_order() -> None:
    ex = _texts(100, 0.7)
    sub = take(ex, 20, seed=1)
    assert len(sub) == 20 and sub.label_counts() == {"great": 14, "other": 6}
    assert list(sub.origins) == sorted(sub.origins, key=lambda o: int(o.split(":")[1]))
    assert take(ex, 20, seed=1) == sub and take(ex, 500, seed=1) is ex


def test_a_label_too_rare_to_stratify_gives_a_seeded_random_draw_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One "rare" row cannot be split between kept and taken: the draw is a plain seeded one
    (every row equally likely), said in a warning, the same on every call."""
    ex = _texts(30, 0.5)
    ex = TextExamples(ex.texts, (*ex.labels[:-1], "rare"), ex.origins)
    with caplog.at_level("WARNING", logger="ray_pipeline.data.splits"):
        sub = take(ex, 10, seed=3)
    assert "a label is too rare to stratify; drawing 10 examples at random" in caplog.text
    assert len(sub) == 10 and take(ex, 10, seed=3) == sub
    _, drawn = held_out(30, None, 10, seed=3)
    assert sub.origins == tuple(f"f:{i}" for i in drawn)


def test_unknown_label_in_test_names_file_and_line(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    test = tmp_path / "test.csv"
    test.write_text("review,score\nfine,great\nmeh,average\n")
    cfg = load_config(smoke_experiment(), [f"data.test_file={test}"])
    with pytest.raises(ConfigError) as exc:
        load_splits(cfg.data)
    assert (
        "test.csv:3: score 'average' does not occur in the training data (known: great, other)"
        in str(exc.value)
    )


def test_missing_demo_data_suggests_fetching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_CACHE_ENV, str(tmp_path / "empty-cache"))
    cfg = load_config(DEMO)
    with pytest.raises(ConfigError, match="ray-pipeline data fetch-demo"):
        load_splits(cfg.data)


def test_folds_partition_and_stratify() -> None:
    ex = _texts(50, 0.6)
    seen: list[int] = []
    for fold in range(5):
        train, val = fold_indices(len(ex), ex.strata, 5, 42, fold)
        assert set(train).isdisjoint(val) and len(train) + len(val) == 50
        assert ex.subset(val).label_counts() == {"great": 6, "other": 4}
        seen += val
    assert sorted(seen) == list(range(50))
    with pytest.raises(ValueError, match="fold must be in"):
        fold_indices(50, None, 5, 42, 5)


def test_too_few_examples_for_the_folds() -> None:
    with pytest.raises(ConfigError, match="rarest label has 2"):
        check_foldable(_texts(10, 0.8), 3)


_FOLDS = """
import json, sys
from ray_pipeline.data.splits import fold_indices, load_splits
from ray_pipeline.loading import load_config
cfg = load_config(sys.argv[1])
train = load_splits(cfg.data).train
print(json.dumps([fold_indices(len(train), train.strata, 2, 42, f)[1] for f in range(2)]))
"""


@pytest.mark.slow
def test_same_seed_same_folds_in_separate_processes() -> None:
    path = str(SMOKE)
    outs = [
        subprocess.run(
            [sys.executable, "-c", _FOLDS, path],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        for seed in ("1", "2")
    ]
    assert outs[0] == outs[1]
    folds = json.loads(outs[0])
    assert sorted(folds[0] + folds[1]) == list(range(160))


def test_huggingface_saved_dataset_and_local_data_dir(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    rows = {"text": ["good", "bad", "fine", "awful"] * 3, "label": [1, 0, 1, 0] * 3}
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows, features=features)}
    ).save_to_disk(str(saved))
    hf = {
        "format": "huggingface",
        "hf_name": str(saved),
        "train_file": None,
        "test_file": None,
        "text_columns": ["text"],
        "label_column": "label",
        "test_size": 0.25,
    }
    splits = load_splits(load_config(smoke_experiment(data=hf)).data)
    assert splits.labels == ("neg", "pos")  # ClassLabel ids become names
    assert (len(splits.train), len(splits.test)) == (9, 3)
    assert splits.sources["train"] == f"{saved}[train]"

    local = tmp_path / "local"
    local.mkdir()
    (local / "train.csv").write_text(
        "text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(8))
    )
    (local / "test.csv").write_text("text,label\nx,a\ny,b\n")
    splits = load_splits(load_config(smoke_experiment(data={**hf, "hf_name": str(local)})).data)
    assert (len(splits.train), len(splits.test)) == (8, 2)

    with pytest.raises(ConfigError, match="could not load Hugging Face dataset"):
        load_splits(
            load_config(smoke_experiment(data={**hf, "hf_name": str(tmp_path / "no")})).data
        )
    with pytest.raises(ConfigError, match="has no column"):
        load_splits(load_config(smoke_experiment(data={**hf, "label_column": "stars"})).data)
