"""In-memory examples of one split, for each task, with where each came from."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TextExamples:
    """Sequence classification: one or two texts and one label per example."""

    texts: tuple[tuple[str, ...], ...]
    labels: tuple[str, ...]
    origins: tuple[str, ...]
    """Where each example starts, e.g. ``train.csv:12`` (file and line, or row)."""

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> TextExamples:
        return TextExamples(
            texts=tuple(self.texts[i] for i in indices),
            labels=tuple(self.labels[i] for i in indices),
            origins=tuple(self.origins[i] for i in indices),
        )

    def joined(self, other: TextExamples) -> TextExamples:
        """These examples, then ``other``'s."""
        return TextExamples(
            self.texts + other.texts, self.labels + other.labels, self.origins + other.origins
        )

    @property
    def strata(self) -> tuple[str, ...]:
        """The label of each example, for stratified splitting."""
        return self.labels

    def label_counts(self) -> Counter[str]:
        return Counter(self.labels)

    def example_labels(self) -> list[tuple[str, tuple[str, ...]]]:
        """(origin, labels used) per example, for checking against the label set."""
        return [(o, (label,)) for o, label in zip(self.origins, self.labels, strict=True)]


@dataclass(frozen=True)
class TokenExamples:
    """Token classification: words and one tag per word per sentence."""

    words: tuple[tuple[str, ...], ...]
    tags: tuple[tuple[str, ...], ...]
    origins: tuple[str, ...]
    """Where each sentence starts, e.g. ``train.conll:40``."""

    def __len__(self) -> int:
        return len(self.tags)

    def subset(self, indices: Sequence[int]) -> TokenExamples:
        return TokenExamples(
            words=tuple(self.words[i] for i in indices),
            tags=tuple(self.tags[i] for i in indices),
            origins=tuple(self.origins[i] for i in indices),
        )

    def joined(self, other: TokenExamples) -> TokenExamples:
        """These examples, then ``other``'s."""
        return TokenExamples(
            self.words + other.words, self.tags + other.tags, self.origins + other.origins
        )

    @property
    def strata(self) -> None:
        """Sentences have many tags: token classification splits are not stratified."""
        return None

    def label_counts(self) -> Counter[str]:
        return Counter(tag for sentence in self.tags for tag in sentence)

    def example_labels(self) -> list[tuple[str, tuple[str, ...]]]:
        return list(zip(self.origins, self.tags, strict=True))


Examples = TextExamples | TokenExamples

TAG_PREFIXES = ("B", "I", "E", "S")
"""Entity tags are ``O`` or ``<prefix>-<type>`` (IOB/IOB2, and IOBES's E- and S-): the tags
seqeval reads entities from. Any other tag (``PER``) would make entity F1 meaningless."""


def tag_problem(tag: str) -> str | None:
    """What is wrong with an NER tag (with the fix), or None for ``O``, ``B-PER``, ``I-PER``..."""
    prefix, dash, kind = tag.partition("-")
    if tag == "O" or (dash and prefix in TAG_PREFIXES and kind):
        return None
    hint = f"B-{tag} or I-{tag}" if tag.isalpha() else "B-PER or I-PER"
    return (
        f"tag {tag!r} is not an IOB tag: entity scores need O or B-<type> / I-<type> "
        f"(IOB2; E-/S- of IOBES also work), e.g. {hint}; convert the tags"
    )


@dataclass(frozen=True)
class DatasetSplits:
    """The splits a run uses, the label set (ids are positions) and what was read."""

    train: Examples
    test: Examples
    validation: Examples | None
    labels: tuple[str, ...]
    rows_read: dict[str, int]
    """Examples per split as read, before subsetting (``test`` absent when carved out)."""
    read_counts: dict[str, dict[str, int]]
    """Label (NER: tag) counts per split as read, before subsetting."""
    sources: dict[str, str]
    """Where each split came from (a file, or a Hugging Face dataset and split)."""

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def refit_rows(self, with_validation: bool) -> Examples:
        """What a refit trains on: the training split, then (``with_validation``) the
        validation split (``final_training.data: train_and_validation``)."""
        if not with_validation or self.validation is None:
            return self.train
        if isinstance(self.train, TextExamples) and isinstance(self.validation, TextExamples):
            return self.train.joined(self.validation)
        assert isinstance(self.train, TokenExamples) and isinstance(self.validation, TokenExamples)
        return self.train.joined(self.validation)
