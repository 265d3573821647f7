"""Hugging Face ``datasets`` as a source: a Hub name, a saved dataset, or a local data dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray_pipeline.data.examples import Examples, TextExamples, TokenExamples
from ray_pipeline.errors import ConfigError
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
    if data.task == "token_classification":
        names = _names(getattr(feature, "feature", None))
        tags = [[names[t] if names else str(t) for t in row] for row in ds[data.label_column]]
        words = ds[data.text_columns[0]]
        return TokenExamples(tuple(map(tuple, words)), tuple(map(tuple, tags)), origins)
    names = _names(feature)
    labels = [names[v] if names else str(v) for v in ds[data.label_column]]
    columns = [ds[c] for c in data.text_columns]
    texts = tuple(tuple(str(col[i]) for col in columns) for i in range(len(ds)))
    return TextExamples(texts, tuple(labels), origins)
