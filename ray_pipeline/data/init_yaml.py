"""The experiment YAML ``ray-pipeline init`` writes: self-contained (no ``include:``, so it
loads wherever it is written), every chosen value with its reason as a comment."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ray_pipeline.data.sizing import BATCH, DEFAULT_FOLDS, SEARCH_BUDGET_S, Sizes
from ray_pipeline.schema import DataConfig

WIDTH = 100
"""Longest line: a reason that does not fit beside its key goes on the lines above it."""
OBJECTIVES = {
    "sequence_classification": ("macro_f1", "every label counts the same, however rare"),
    "token_classification": ("entity_f1", "entities found, scored with seqeval"),
}


@dataclass(frozen=True)
class Spec:
    """What init decided before sizing: the name, the data section, the backbones, and why
    (by key: ``format``, ``task``, ``text_columns``, ``label_column``, ``hf_splits``,
    ``backbones``)."""

    name: str
    data: DataConfig
    backbones: list[dict[str, Any]]
    why: dict[str, str]


@dataclass(frozen=True)
class Rendered:
    text: str
    choices: tuple[str, ...]
    """``key = value: why`` for every value chosen for a reason."""


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.choices: list[str] = []

    def comment(self, indent: int, text: str) -> None:
        width = WIDTH - indent - 2
        self.lines += [" " * indent + "# " + part for part in textwrap.wrap(text, width)]

    def key(self, path: str, value: Any = None, why: str | None = None) -> None:
        """``path``'s last part (indented by its depth) and, unless None, its value."""
        indent = 2 * path.count(".")
        line = " " * indent + path.rpartition(".")[2] + ":"
        shown = flow(value)
        if value is not None:
            line += f" {shown}"
        if why:
            self.choices.append(
                f"{path} = {shown}: {why}" if value is not None else f"{path}: {why}"
            )
        if why and len(f"{line}  # {why}") <= WIDTH:
            line += f"  # {why}"
        elif why:
            self.comment(indent, why)
        self.lines.append(line)


def flow(value: Any) -> str:
    """One YAML value on one line (lists and mappings in flow style)."""
    if isinstance(value, Path):
        value = value.as_posix()
    dumped = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6)
    return dumped.strip().removesuffix("\n...").strip()


def shown_path(path: Path, base: Path | None) -> Path:
    """``path`` relative to ``base`` (the YAML's directory) when inside it, else absolute."""
    absolute = path.resolve()
    if base is not None and absolute.is_relative_to(base.resolve()):
        return absolute.relative_to(base.resolve())
    return absolute


def render(spec: Spec, sizes: Sizes, base: Path | None) -> Rendered:
    """The YAML text; file paths relative to ``base`` when inside it (None: all absolute)."""
    out = _Writer()
    train = spec.data.train_file or Path(spec.data.hf_name or "")
    out.comment(0, f"Experiment written by `ray-pipeline init` for {shown_path(train, base)}.")
    out.comment(0, "Each value it chose says why. Check, then run it:")
    out.lines += ["#   ray-pipeline validate --config <this file>"]
    out.lines += ["#   ray-pipeline run --config <this file>"]
    out.comment(0, "Keys not written here take their defaults: docs/configuration.md.")
    out.lines.append("")
    out.key("experiment")
    out.key("experiment.name", spec.name)
    out.lines.append("")
    out.comment(0, "outputs_root: outputs  (the default: ./outputs/<name>/ where you run)")
    out.lines.append("")
    _data(out, spec, base)
    out.lines.append("")
    out.key("model")
    out.key("model.backbones", why=spec.why["backbones"])
    out.lines += [f"    - {flow(entry)}" for entry in spec.backbones]
    out.lines.append("")
    _hpo(out, spec, sizes)
    out.lines.append("")
    out.key("benchmark")
    out.key("benchmark.benchmarking")
    out.key("benchmark.benchmarking.batch_sizes", [1, BATCH])
    out.key("benchmark.benchmarking.max_length", sizes.max_length, "as trained")
    out.lines.append("")
    out.key("resources", why=sizes.why.get("resources"))
    out.key("resources.workers_per_trial", 1)
    out.key("resources.cpus_per_worker", sizes.cpus_per_worker)
    out.key("resources.gpus_per_worker", sizes.gpus_per_worker)
    return Rendered("\n".join(out.lines) + "\n", tuple(out.choices))


def _data(out: _Writer, spec: Spec, base: Path | None) -> None:
    data, why = spec.data, spec.why
    out.key("data")
    out.key("data.task", data.task, why["task"])
    out.key("data.format", data.format, why["format"])
    if data.format == "huggingface":
        out.key("data.hf_name", data.hf_name)
        out.key("data.hf_splits", data.hf_splits, why["hf_splits"])
    for role in ("train", "validation", "test"):
        path = getattr(data, f"{role}_file")
        if path is not None:
            out.key(f"data.{role}_file", shown_path(path, base))
    if "test_size" in why:
        out.key("data.test_size", data.test_size, why["test_size"])
    if data.format != "conll":
        out.key("data.text_columns", data.text_columns, why["text_columns"])
        out.key("data.label_column", data.label_column, why["label_column"])


def _hpo(out: _Writer, spec: Spec, sizes: Sizes) -> None:
    why = sizes.why
    metric, why_metric = OBJECTIVES[spec.data.task]
    low, high = sizes.learning_rate
    out.key("hpo")
    out.key("hpo.num_samples", sizes.num_samples, why.get("num_samples"))
    out.key("hpo.time_budget_s", SEARCH_BUDGET_S, why.get("time_budget_s"))
    out.key("hpo.evaluation", sizes.evaluation, why.get("evaluation"))
    if sizes.evaluation == "cv":
        out.key("hpo.k_folds", sizes.k_folds)
    elif sizes.k_folds != DEFAULT_FOLDS:  # `data inspect` shows folds even with holdout
        out.key("hpo.k_folds", sizes.k_folds, "the rarest label's examples (for data inspect)")
    if sizes.search_rows is not None:
        out.key("hpo.max_train_examples", sizes.search_rows, why.get("max_train_examples"))
    sampler = {"type": "tpe", "n_startup_trials": sizes.n_startup_trials}
    out.key("hpo.sampler", sampler, "half the trials at random, then TPE")
    out.key("hpo.objective", {"metric": metric, "direction": "maximize"}, why_metric)
    out.key("hpo.training")
    out.key("hpo.training.epochs", sizes.epochs, why.get("epochs"))
    out.key("hpo.training.batch_size", BATCH)
    out.key("hpo.training.max_length", sizes.max_length, why.get("max_length"))
    out.key("hpo.training.warmup_ratio", 0.1)
    out.key("hpo.search_space")
    rate = {"type": "float", "low": low, "high": high, "log": True}
    out.key("hpo.search_space.learning_rate", rate, why.get("learning_rate"))
    decay = {"type": "float", "low": 0.0, "high": 0.1}
    out.key("hpo.search_space.weight_decay", decay)
