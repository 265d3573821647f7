"""What a Hugging Face dataset directory (``save_to_disk``) holds, for ``ray-pipeline init``:
its splits, its task (a column of token lists and one of tag lists: token classification),
and its columns, read from the dataset's features and first rows."""

from __future__ import annotations

import dataclasses
from typing import Any

from ray_pipeline.data.infer import (
    SAMPLE_ROWS,
    TAG_NAMES,
    TASKS,
    VALIDATION_SPLITS,
    Column,
    DataFlags,
    DataGuess,
    carved_test,
    choose_columns,
    column_stats,
)
from ray_pipeline.errors import ConfigError
from ray_pipeline.schema import DataConfig


def infer_hub(flags: DataFlags) -> DataGuess:
    """The data section for a dataset directory saved with ``DatasetDict.save_to_disk``."""
    import datasets

    where = str(flags.train)
    _refuse_split_flags(flags)
    if not (flags.train / "dataset_dict.json").is_file():
        raise ConfigError.at(
            where,
            "a directory must hold a Hugging Face DatasetDict saved with save_to_disk "
            "(dataset_dict.json missing; a single Dataset: DatasetDict({'train': ds})"
            ".save_to_disk(dir)); or pass a data file (csv, jsonl, parquet, conll)",
        )
    loaded = datasets.load_from_disk(where)
    if "train" not in loaded:
        have = ", ".join(loaded)
        raise ConfigError.at(where, f"has no 'train' split (has {have}); name one split train")
    train = loaded["train"]
    task, why_task = _task(train.features, flags)
    labels: int | None = None
    if task == "token_classification":
        text, label, chosen = _token_columns(train.features, flags, where)
    else:
        sample = train.select(range(min(len(train), SAMPLE_ROWS)))
        whole = len(train) <= SAMPLE_ROWS
        columns = [column_stats(n, sample[n], whole) for n in train.column_names]
        text, label, chosen = _sequence_columns(columns, train.features, flags, where)
        labels = next(c.distinct for c in columns if c.name == label)
    splits, chosen["hf_splits"] = _splits(loaded, label, task)
    test_size: float = DataConfig.model_fields["test_size"].default
    if "test" not in splits:
        test_size, chosen["test_size"] = carved_test(labels, len(train), where)
    chosen.update(format="a DatasetDict saved with save_to_disk", task=why_task)
    data = DataConfig(
        task=task,
        format="huggingface",
        hf_name=str(flags.train.resolve()),
        hf_splits=splits,
        text_columns=text,
        label_column=label,
        test_size=test_size,
    )
    return DataGuess(data, chosen)


def _refuse_split_flags(flags: DataFlags) -> None:
    for flag, value in (("--validation", flags.validation), ("--test", flags.test)):
        if value is not None:
            raise ConfigError.at(
                flag,
                f"{flags.train} is a Hugging Face dataset: its own splits are used (train, "
                f"{' or '.join(VALIDATION_SPLITS)}, test); drop {flag}",
            )
    if flags.format is not None:
        raise ConfigError.at("--format", f"{flags.train} is a dataset directory; drop --format")


def _inner(feature: Any) -> str | None:
    """What a list feature holds: ``ClassLabel``, a dtype (``string``, ``int64``), or None
    when the feature is not a list."""
    inner = getattr(feature, "feature", None)
    if inner is None:
        return None
    return "ClassLabel" if type(inner).__name__ == "ClassLabel" else getattr(inner, "dtype", "")


def _token_lists(features: Any) -> list[str]:
    """Columns of token lists: lists of strings not named like tags."""
    return [
        name
        for name, feature in features.items()
        if _inner(feature) == "string" and name.lower() not in TAG_NAMES
    ]


def _tag_lists(features: Any) -> list[str]:
    """Columns of tag lists: lists of ClassLabel ids, or lists named like tags (best first)."""
    found = [
        name
        for name, feature in features.items()
        if _inner(feature) == "ClassLabel"
        or (_inner(feature) is not None and name.lower() in TAG_NAMES)
    ]
    return sorted(found, key=lambda n: TAG_NAMES.index(n.lower()) if n.lower() in TAG_NAMES else 99)


def _task(features: Any, flags: DataFlags) -> tuple[str, str]:
    tokens, tags = _token_lists(features), _tag_lists(features)
    if flags.task is not None:
        return TASKS[flags.task], "--task"
    if tokens and tags:
        return "token_classification", f"lists of tokens ({tokens[0]}) and of tags ({tags[0]})"
    return "sequence_classification", "no columns of token and tag lists"


def _token_columns(
    features: Any, flags: DataFlags, where: str
) -> tuple[list[str], str, dict[str, str]]:
    lists = [name for name, feature in features.items() if _inner(feature) is not None]
    for flag, name in (
        ("--text-column", flags.text_column),
        ("--label-column", flags.label_column),
    ):
        if name is not None and name not in lists:
            have = ", ".join(lists) or "none"
            raise ConfigError.at(flag, f"{where}: {name!r} is not a column of lists ({have})")
    tokens = [flags.text_column] if flags.text_column else _token_lists(features)
    tags = [flags.label_column] if flags.label_column else _tag_lists(features)
    if len(tokens) != 1:
        names = ", ".join(tokens) or "none"
        raise ConfigError.at(where, f"columns of token lists: {names}; pass --text-column NAME")
    if not tags:
        raise ConfigError.at(where, "no column of tag lists; pass --label-column NAME")
    why = {"text_columns": "the list of tokens", "label_column": "the list of tags"}
    return tokens, tags[0], why


def _sequence_columns(
    columns: list[Column], features: Any, flags: DataFlags, where: str
) -> tuple[list[str], str, dict[str, str]]:
    """As for a file, but a single ClassLabel feature is the label."""
    classes = [name for name, f in features.items() if type(f).__name__ == "ClassLabel"]
    if flags.label_column is not None or len(classes) != 1:
        return choose_columns([c for c in columns if not c.nested], flags, where)
    flagged = dataclasses.replace(flags, label_column=classes[0])
    text, label, chosen = choose_columns([c for c in columns if not c.nested], flagged, where)
    count = len(features[label].names)
    return text, label, {**chosen, "label_column": f"a ClassLabel feature of {count} classes"}


def _splits(loaded: Any, label: str, task: str) -> tuple[dict[str, str], str]:
    """hf_splits: train, the first validation-like split, and test when it is labelled."""
    splits = {"train": "train"}
    validation = next((s for s in VALIDATION_SPLITS if s in loaded), None)
    if validation is not None:
        splits["validation"] = validation
    if "test" not in loaded:
        return splits, "no test split"
    sample = loaded["test"].select(range(min(len(loaded["test"]), 100)))[label]
    if task == "sequence_classification" and all(v is None or v == -1 for v in sample):
        return splits, "the test split is unlabelled (-1): left out"
    splits["test"] = "test"
    return splits, "the dataset's own splits"
