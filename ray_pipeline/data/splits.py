"""Assemble a run's splits from the data config, and the cross-validation folds.

Everything here is seeded and depends only on the data and the seeds, so every process
and machine computes the same splits: a fold's indices follow from (data, seed, k, fold).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ray_pipeline.data.draws import fold_of_each_row, held_out
from ray_pipeline.data.examples import DatasetSplits, Examples
from ray_pipeline.data.readers import read_file
from ray_pipeline.errors import ConfigError, Problem
from ray_pipeline.paths import data_cache_dir
from ray_pipeline.schema import DataConfig

log = logging.getLogger(__name__)


def load_splits(data: DataConfig) -> DatasetSplits:
    """Read the configured splits, carve out a test split if none is given, and subset."""
    if data.format == "huggingface":
        from ray_pipeline.data.hub import read_hf_splits

        read = read_hf_splits(data)
    else:
        read = {}
        for role, path in (
            ("train", data.train_file),
            ("validation", data.validation_file),
            ("test", data.test_file),
        ):
            if path is not None:
                _check_exists(path, f"data.{role}_file")
                read[role] = (
                    read_file(path, data.format, data.text_columns, data.label_column),
                    str(path),
                )
    rows_read = {role: len(ex) for role, (ex, _) in read.items()}
    read_counts = {role: dict(sorted(ex.label_counts().items())) for role, (ex, _) in read.items()}
    sources = {role: src for role, (_, src) in read.items()}
    train = read["train"][0]
    if "test" in read:
        test = read["test"][0]
    else:
        if len(train) < 2:
            raise ConfigError.at(
                sources["train"],
                f"{len(train)} training example(s): too few to carve a test split out of "
                "(data.test_size); give data.test_file, or more examples",
            )
        train, test = carve_test(train, data.test_size, data.seed)
        sources["test"] = f"{data.test_size:.0%} of {sources['train']} (seed {data.seed})"
    train = take(train, data.max_train_examples, data.seed)
    test = take(test, data.max_test_examples, data.seed)
    validation = read["validation"][0] if "validation" in read else None
    labels = tuple(sorted(train.label_counts()))
    if len(labels) < 2:
        counts = dict(train.label_counts())
        raise ConfigError.at(
            "data.label_column",
            f"the training data ({sources['train']}) has {len(labels)} label(s) {counts}; a "
            f"classifier needs at least two: check data.label_column ({data.label_column!r}) "
            "and the file",
        )
    for split in (test, validation):
        if split is not None:
            _check_known_labels(split, labels, data.label_column)
    return DatasetSplits(train, test, validation, labels, rows_read, read_counts, sources)


def local_files_present(data: DataConfig) -> bool:
    """Whether the data is local files that all exist (reading them is cheap and offline)."""
    files = [data.train_file, data.validation_file, data.test_file]
    return data.format != "huggingface" and all(p.is_file() for p in files if p is not None)


def check_local_files(data: DataConfig) -> bool:
    """For ``validate``: refuse (exit 2, as reading the data in ``run`` would) a configured
    split file that does not exist, unless it lies in the data cache (``{data_cache}``: the
    demo's files, fetched later by ``ray-pipeline data fetch-demo``). Returns whether the
    data is local files that all exist, so that reading them is cheap and offline."""
    if data.format != "huggingface":
        for role in ("train", "validation", "test"):
            path: Path | None = getattr(data, f"{role}_file")
            if path is not None and not path.is_file() and not _in_data_cache(path):
                _check_exists(path, f"data.{role}_file")
    return local_files_present(data)


def _in_data_cache(path: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(data_cache_dir()))


def read_labelled_file(
    data: DataConfig, path: Path, where: str, labels: tuple[str, ...]
) -> Examples:
    """An extra labelled file (e.g. ``benchmark.benchmarking.test_data``) in the data's format
    (by suffix for Hub datasets), every label checked against ``labels``."""
    _check_exists(path, where)
    fmt: str = data.format
    if fmt == "huggingface":
        fmt = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}.get(path.suffix, "conll")
    examples = read_file(path, fmt, data.text_columns, data.label_column)
    _check_known_labels(examples, labels, data.label_column)
    return examples


def _check_exists(path: Path, where: str) -> None:
    if path.is_file():
        return
    fix = f"check {where}"
    if _in_data_cache(path):
        fix = "fetch the demo data first: `ray-pipeline data fetch-demo`"
    raise ConfigError.at(where, f"{path} not found; {fix}")


def _check_known_labels(split: Examples, labels: tuple[str, ...], column: str) -> None:
    known = set(labels)
    problems = []
    for origin, used in split.example_labels():
        unknown = sorted(set(used) - known)
        if unknown:
            names = ", ".join(map(repr, unknown))
            message = (
                f"{column} {names} does not occur in the training data "
                f"(known: {', '.join(labels)}); fix the label or add training examples"
            )
            problems.append(Problem(where=origin, message=message))
    if problems:
        raise ConfigError(problems[:10], header=f"{len(problems)} example(s) with unknown labels")


def _split_indices(examples: Examples, size: int | float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, taken) indices with ``size`` examples taken, stratified by label where possible."""
    try:
        kept, taken = held_out(len(examples), examples.strata, size, seed)
    except ValueError:
        if examples.strata is None:
            raise
        log.warning("a label is too rare to stratify; drawing %s examples at random", size)
        kept, taken = held_out(len(examples), None, size, seed)
    return kept.tolist(), taken.tolist()


def carve_test(train: Examples, test_size: float, seed: int) -> tuple[Examples, Examples]:
    """Split off ``test_size`` of ``train`` as the test split (stratified where possible)."""
    rest, test = _split_indices(train, test_size, seed)
    return train.subset(rest), train.subset(test)


def take(examples: Examples, limit: int | None, seed: int) -> Examples:
    """At most ``limit`` examples, drawn with a seeded (stratified) shuffle, in file order."""
    if limit is None or limit >= len(examples):
        return examples
    _, taken = _split_indices(examples, limit, seed)
    return examples.subset(taken)


def holdout_indices(examples: Examples, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices of a holdout split: ``fraction`` of ``examples`` held out,
    stratified by label where possible, seeded (the same rows for every trial)."""
    return _split_indices(examples, fraction, seed)


def fold_indices(
    n: int, strata: Sequence[str] | None, k: int, seed: int, fold: int
) -> tuple[list[int], list[int]]:
    """(train, validation) indices of fold ``fold`` of ``k``, stratified when ``strata`` is set."""
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in [0, {k}), but got {fold}")
    folds = fold_of_each_row(n, strata, k, seed)
    return np.flatnonzero(folds != fold).tolist(), np.flatnonzero(folds == fold).tolist()


def check_foldable(examples: Examples, k: int) -> None:
    """Raise ConfigError when ``k`` folds cannot be made from ``examples``."""
    counts = examples.label_counts() if examples.strata is not None else None
    smallest = min(counts.values()) if counts else len(examples)
    if smallest >= k:
        return
    what = f"the rarest label has {smallest}" if counts else f"there are {smallest}"
    shown = f" (label counts: {dict(sorted(counts.items()))})" if counts else ""
    raise ConfigError.at(
        "hpo.k_folds",
        f"{k} folds need at least {k} examples (of every label), but {what}{shown}; "
        "lower hpo.k_folds, add examples of that label, or drop it",
    )
