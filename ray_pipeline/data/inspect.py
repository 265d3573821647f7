"""``ray-pipeline data inspect``: what the run will train on, before any training."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from ray_pipeline.data.examples import DatasetSplits, Examples, TextExamples
from ray_pipeline.data.splits import check_foldable, fold_indices, load_splits
from ray_pipeline.errors import PipelineError
from ray_pipeline.models import load_tokenizer
from ray_pipeline.schema import BackboneConfig, PipelineConfig

_PERCENTILES = (50, 90, 95, 99)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class SplitReport(_Frozen):
    source: str
    rows_read: int | None
    """Examples in the source (None when the split was carved out of train)."""
    label_counts_read: dict[str, int] | None
    rows_used: int
    label_counts: dict[str, int]
    """Label (NER: tag) counts of the examples the run uses."""


class TokenLengths(_Frozen):
    backbone: str
    percentiles: dict[str, int]
    max: int
    max_length: int
    truncated_share: float
    error: str | None = None


class FoldReport(_Frozen):
    fold: int
    train_rows: int
    validation_rows: int
    validation_label_share: dict[str, float]
    max_deviation_pp: float
    """Largest difference between a label's share in this fold and in the whole set."""


class DataReport(_Frozen):
    task: str
    labels: list[str]
    splits: dict[str, SplitReport]
    token_lengths: list[TokenLengths]
    k_folds: int
    fold_seed: int
    stratified: bool
    folds: list[FoldReport]
    evaluation: str = "cv"
    """How HPO scores trials (``hpo.evaluation``): ``cv`` over ``folds``, or ``holdout``."""


def _shares(examples: Examples) -> dict[str, float]:
    counts = examples.label_counts()
    total = sum(counts.values())
    return {label: n / total for label, n in sorted(counts.items())}


def _token_lengths(backbone: BackboneConfig, examples: Examples, max_length: int) -> TokenLengths:
    try:
        tokenizer = load_tokenizer(backbone)
    except (PipelineError, OSError, ValueError) as exc:
        msg = f"tokenizer unavailable: {exc}"
        return TokenLengths(
            backbone=backbone.name,
            percentiles={},
            max=0,
            max_length=max_length,
            truncated_share=0.0,
            error=msg,
        )
    if isinstance(examples, TextExamples):
        columns = [list(c) for c in zip(*examples.texts, strict=True)]
        ids = tokenizer(*columns, verbose=False)["input_ids"]
    else:
        words = [list(w) for w in examples.words]
        ids = tokenizer(words, is_split_into_words=True, verbose=False)["input_ids"]
    lengths = np.array([len(row) for row in ids])
    return TokenLengths(
        backbone=backbone.name,
        percentiles={f"p{p}": int(np.percentile(lengths, p)) for p in _PERCENTILES},
        max=int(lengths.max()),
        max_length=max_length,
        truncated_share=float((lengths > max_length).mean()),
    )


def _folds(train: Examples, k: int, seed: int) -> list[FoldReport]:
    check_foldable(train, k)
    whole = _shares(train)
    reports = []
    for fold in range(k):
        fit, val = fold_indices(len(train), train.strata, k, seed, fold)
        shares = _shares(train.subset(val))
        deviation = max(abs(shares.get(label, 0.0) - share) for label, share in whole.items())
        reports.append(
            FoldReport(
                fold=fold,
                train_rows=len(fit),
                validation_rows=len(val),
                validation_label_share=shares,
                max_deviation_pp=100 * deviation,
            )
        )
    return reports


def _split_report(splits: DatasetSplits, role: str, used: Examples) -> SplitReport:
    return SplitReport(
        source=splits.sources[role],
        rows_read=splits.rows_read.get(role),
        label_counts_read=splits.read_counts.get(role),
        rows_used=len(used),
        label_counts=dict(sorted(used.label_counts().items())),
    )


def inspect_data(config: PipelineConfig) -> DataReport:
    """Read the configured data and describe splits, labels, token lengths and folds."""
    splits: DatasetSplits = load_splits(config.data)
    roles = {"train": splits.train, "test": splits.test}
    if splits.validation is not None:
        roles["validation"] = splits.validation
    max_length = config.hpo.training.max_length
    return DataReport(
        task=config.data.task,
        labels=list(splits.labels),
        splits={role: _split_report(splits, role, ex) for role, ex in roles.items()},
        token_lengths=[_token_lengths(b, splits.train, max_length) for b in config.model.backbones],
        k_folds=config.hpo.k_folds,
        fold_seed=config.hpo.seed,
        stratified=splits.train.strata is not None,
        folds=_folds(splits.train, config.hpo.k_folds, config.hpo.seed),
        evaluation=_evaluation(config, splits),
    )


def _evaluation(config: PipelineConfig, splits: DatasetSplits) -> str:
    """``cv``, or what holdout scores trials on."""
    if config.hpo.evaluation != "holdout":
        return "cv"
    if splits.validation is not None:
        rows = len(splits.validation)
        return f"holdout: every trial scored on the validation split ({rows:,} rows)"
    share = config.hpo.holdout_fraction
    return f"holdout: every trial scored on {share:.0%} of the training rows (hpo.holdout_fraction)"


def _counts(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    return ", ".join(f"{k} {v:,} ({v / total:.1%})" for k, v in counts.items())


def format_report(report: DataReport) -> str:
    """The report as terminal text."""
    lines = [f"task {report.task}; labels: {', '.join(report.labels)}"]
    for role, split in report.splits.items():
        read = f"{split.rows_read:,} rows" if split.rows_read is not None else "carved out"
        lines.append(f"{role:<10} {read}  [{split.source}]")
        if split.label_counts_read is not None:
            lines.append(f"{'':<10} {_counts(split.label_counts_read)}")
        if split.rows_read != split.rows_used:
            lines.append(f"{'':<10} using {split.rows_used:,}: {_counts(split.label_counts)}")
    for tl in report.token_lengths:
        if tl.error:
            lines.append(f"tokens ({tl.backbone}): {tl.error}")
            continue
        pcts = " ".join(f"{k}={v}" for k, v in tl.percentiles.items())
        lines.append(
            f"tokens ({tl.backbone}): {pcts} max={tl.max}; "
            f"{tl.truncated_share:.1%} longer than max_length {tl.max_length}"
        )
    if report.evaluation != "cv":
        lines.append(f"evaluation: {report.evaluation}")
        return "\n".join(lines)
    kind = "stratified" if report.stratified else "k-fold"
    lines.append(f"folds: {report.k_folds} ({kind}, seed {report.fold_seed})")
    for f in report.folds:
        shares = ", ".join(f"{k} {v:.1%}" for k, v in f.validation_label_share.items())
        lines.append(
            f"  fold {f.fold}: train {f.train_rows:,} / validation {f.validation_rows:,}"
            f"  [{shares}]  max deviation {f.max_deviation_pp:.2f} pp"
        )
    return "\n".join(lines)
