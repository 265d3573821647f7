"""Tokenization into model inputs, NER label alignment, and batching with dynamic padding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ray_pipeline.data.examples import Examples, TextExamples

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
"""Label of positions the loss ignores: special tokens and non-first sub-tokens."""

Row = dict[str, Any]
"""One encoded example: lists of ints per input, ``labels`` an int (sequence) or a list (tokens)."""


def encode(
    tokenizer: PreTrainedTokenizerBase,
    examples: Examples,
    label2id: dict[str, int],
    max_length: int,
) -> list[Row]:
    """Token ids, attention masks and labels per example, truncated to ``max_length``."""
    if isinstance(examples, TextExamples):
        columns = list(zip(*examples.texts, strict=True))
        enc = tokenizer(*map(list, columns), truncation=True, max_length=max_length)
        rows = [{k: enc[k][i] for k in enc} for i in range(len(examples))]
        for row, label in zip(rows, examples.labels, strict=True):
            row["labels"] = label2id[label]
        return rows
    enc = tokenizer(
        [list(w) for w in examples.words],
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
    )
    rows = []
    for i, tags in enumerate(examples.tags):
        row = {k: enc[k][i] for k in enc}
        row["labels"] = align_labels(enc.word_ids(i), [label2id[t] for t in tags])
        rows.append(row)
    return rows


def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int]) -> list[int]:
    """Label the first sub-token of each word; ignore special tokens and later sub-tokens."""
    aligned, previous = [], None
    for word in word_ids:
        if word is None or word == previous:
            aligned.append(IGNORE_INDEX)
        else:
            aligned.append(word_labels[word])
        previous = word
    return aligned


def collate(rows: Sequence[Row], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest row; token labels pad with IGNORE_INDEX."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    batch = {}
    for key, first in rows[0].items():
        if isinstance(first, int):
            batch[key] = torch.tensor([r[key] for r in rows])
            continue
        fill = {"input_ids": pad_id, "labels": IGNORE_INDEX}.get(key, 0)
        batch[key] = torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows])
    return batch
