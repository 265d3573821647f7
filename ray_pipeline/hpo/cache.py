"""What a trial process keeps between trials: data, tokenizer, encoded rows and fresh models.

Ray Tune reuses a one-worker trial's process for the next trial (``reuse_actors``), so the
second trial on a process skips loading and tokenizing the data and reading the backbone's
weights: it starts in well under a second instead of seconds. Keys are the configs' JSON, so
a change of data, backbone or ``max_length`` loads afresh, and one of dropout builds afresh.
Models are copied out of the cache, never handed out, so a trial cannot change what the next
one starts from.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ray_pipeline.data.encode import Row, encode
from ray_pipeline.data.examples import DatasetSplits
from ray_pipeline.data.splits import load_splits
from ray_pipeline.models import build_model, load_tokenizer
from ray_pipeline.schema import BackboneConfig, DataConfig, Task, TrainingParams

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MODEL_CACHE_BYTES = 2 << 30
"""Fresh models kept per process, in parameter bytes (one model per fold seed): MiniLM's k
folds fit many times over; a model too large to keep k copies of is built each time."""


@dataclass(frozen=True)
class Prepared:
    """A trial's inputs: the splits, the tokenizer and the encoded training (and validation)
    rows."""

    splits: DatasetSplits
    tokenizer: PreTrainedTokenizerBase
    rows: list[Row]
    pad_id: int
    validation_rows: list[Row] | None = None
    """The validation split, encoded (None: the data has none)."""


def prepared(data: DataConfig, backbone: BackboneConfig, max_length: int) -> Prepared:
    """The splits, tokenizer and encoded rows for these settings (cached per process)."""
    return _prepared(data.model_dump_json(), backbone.model_dump_json(), max_length)


@functools.lru_cache(maxsize=4)
def _prepared(data_json: str, backbone_json: str, max_length: int) -> Prepared:
    data = DataConfig.model_validate_json(data_json)
    backbone = BackboneConfig.model_validate_json(backbone_json)
    splits = load_splits(data)
    tokenizer = load_tokenizer(backbone)
    rows = encode(tokenizer, splits.train, splits.label2id, max_length)
    validation = splits.validation
    held = (
        None if validation is None else encode(tokenizer, validation, splits.label2id, max_length)
    )
    return Prepared(splits, tokenizer, rows, int(tokenizer.pad_token_id or 0), held)


def fresh_model(
    backbone: BackboneConfig,
    task: Task,
    labels: tuple[str, ...],
    seed: int,
    training: TrainingParams,
) -> PreTrainedModel:
    """A copy of the backbone's model for ``task`` and ``labels``, seeded, with ``training``'s
    dropout settings (cached per process).

    Torch's RNG is seeded again afterwards, so dropout and shuffling draw the same numbers
    whether the model came from the cache or was built."""
    import torch

    dropouts = training.dropout, training.classifier_dropout  # all else of it trains the model
    key = (backbone.model_dump_json(), task, labels, seed, *dropouts)
    if key not in _MODELS:
        model = build_model(backbone, task, labels, seed, training)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        while _MODELS and sum(_MODEL_BYTES.values()) + size > MODEL_CACHE_BYTES:
            oldest = next(iter(_MODELS))
            del _MODELS[oldest], _MODEL_BYTES[oldest]
        if size > MODEL_CACHE_BYTES:
            torch.manual_seed(seed)
            return model
        _MODELS[key], _MODEL_BYTES[key] = model, size
    copied: PreTrainedModel = copy.deepcopy(_MODELS[key])
    torch.manual_seed(seed)
    return copied


_ModelKey = tuple[str, Task, tuple[str, ...], int, float | None, float | None]
_MODELS: dict[_ModelKey, PreTrainedModel] = {}
_MODEL_BYTES: dict[_ModelKey, int] = {}
