"""Hugging Face ``datasets`` as a source: a Hub name, a saved dataset, or a local data dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray_pipeline.data.examples import Examples, TextExamples, TokenExamples, tag_problem
from ray_pipeline.errors import ConfigError, Problem
from ray_pipeline.schema import DataConfig


def read_hf_splits(data: DataConfig) -> dict[str, tuple[Examples, str]]:
    """Load the configured splits; ClassLabel ids are turned into their names."""
    import datasets

    assert data.hf_name is not None
    local = Path(data.hf_name).expanduser()
    try:
        if (local / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(local))
        else:
            loaded = datasets.load_dataset(data.hf_name, data.hf_config)
    except Exception as exc:  # the library raises many types for "cannot load"
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError.at(
            "data.hf_name",
            f"could not load Hugging Face dataset {data.hf_name!r} "
            f"({exc.__class__.__name__}: {first_line}); offline, point data at local files "
            "(format csv/jsonl/parquet/conll) or a dataset saved with save_to_disk",
        ) from exc
    out: dict[str, tuple[Examples, str]] = {}
    for role, split in data.hf_splits.items():
        if split not in loaded:
            if role == "test":
                continue  # carved out of train
            have = ", ".join(loaded)
            raise ConfigError.at(
                f"data.hf_splits.{role}", f"split {split!r} not in {data.hf_name} (has {have})"
            )
        out[role] = (_examples(loaded[split], data, split), f"{data.hf_name}[{split}]")
    return out


def _names(feature: Any) -> list[str] | None:
    names = getattr(feature, "names", None)
    return list(names) if names else None


def _examples(ds: Any, data: DataConfig, split: str) -> Examples:
    wanted = [*data.text_columns, data.label_column]
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise ConfigError.at(
            "data.text_columns / data.label_column",
            f"{data.hf_name}[{split}] has no column(s) {', '.join(missing)} "
            f"(has {', '.join(ds.column_names)})",
        )
    feature = ds.features[data.label_column]
    origins = tuple(f"{data.hf_name}[{split}] row {i + 1}" for i in range(len(ds)))
    problems: list[Problem] = []
    if data.task == "token_classification":
        names = _names(getattr(feature, "feature", None))
        tags = []
        for origin, row in zip(origins, ds[data.label_column], strict=True):
            named = [_label(t, names) for t in row or ()]
            wrong = [w for t, n in zip(row or (), named, strict=True) if (w := _wrong(t, n, names))]
            if wrong:
                problems.append(Problem(origin, wrong[0]))  # the row's first bad tag
            tags.append(tuple(n or "" for n in named))
        _raise_if_any(problems, data, split)
        words = ds[data.text_columns[0]]
        return TokenExamples(tuple(map(tuple, words)), tuple(tags), origins)
    names = _names(feature)
    labels = []
    for origin, value in zip(origins, ds[data.label_column], strict=True):
        label = _label(value, names)
        problem = _wrong(value, label, names, column=data.label_column)
        if problem is not None:
            problems.append(Problem(origin, problem))
        labels.append(label or "")
    _raise_if_any(problems, data, split)
    columns = [ds[c] for c in data.text_columns]
    texts = tuple(tuple(str(col[i]) for col in columns) for i in range(len(ds)))
    return TextExamples(texts, tuple(labels), origins)


def _label(value: Any, names: list[str] | None) -> str | None:
    """A label or tag value as its name: a ClassLabel id's name, else the value as text;
    None when it is none (None, or an id outside the ClassLabel: -1 marks unlabelled rows)."""
    if value is None:
        return None
    if names is None:
        return str(value)
    if isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    return None


def _wrong(value: Any, name: str | None, names: list[str] | None, column: str = "") -> str | None:
    """What is wrong with one label (``column`` given) or NER tag, or None."""
    if name is not None:
        return None if column else tag_problem(name)
    what = f"{column} {value!r}" if column else f"tag {value!r}"
    if value is None:
        return f"{what} is missing: every example needs one; drop the row or use another split"
    assert names is not None
    return (
        f"{what} is not a class id of the dataset's ClassLabel (0..{len(names) - 1}: "
        f"{', '.join(names)}); -1 marks an unlabelled row (as in GLUE's test splits): map "
        "data.hf_splits to labelled splits (leave test out to carve it from train)"
    )


def _raise_if_any(problems: list[Problem], data: DataConfig, split: str) -> None:
    if problems:
        header = f"{len(problems)} example(s) of {data.hf_name}[{split}] with bad labels"
        raise ConfigError(problems[:10], header=header)
