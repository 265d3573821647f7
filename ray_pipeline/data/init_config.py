"""``ray-pipeline init``: a data file in, one commented experiment YAML out.

Infers the data section (``infer.py``, ``infer_hub.py``), resolves the backbone, reads the data
and the token lengths as ``data inspect`` does, sizes the run for this machine (``sizing.py``),
checks the result as a whole config, and only then writes the one file; then loads it back the
way ``run`` will. Anything ambiguous or unusable is refused (exit 2) before the file is written.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ray_pipeline.data.examples import TextExamples
from ray_pipeline.data.infer import DataFlags, DataGuess, infer_file
from ray_pipeline.data.infer_hub import infer_hub
from ray_pipeline.data.init_yaml import Spec, render
from ray_pipeline.data.inspect import DataReport, format_report, inspect_data
from ray_pipeline.data.sizing import (
    DataFacts,
    Machine,
    ModelFacts,
    Sizes,
    dense_params,
    estimate,
    size_run,
)
from ray_pipeline.data.splits import load_splits
from ray_pipeline.errors import ConfigError, PipelineError, Problem
from ray_pipeline.loading import default_config_path, load_config, read_yaml
from ray_pipeline.models import check_max_length, max_tokens, probe_backbones
from ray_pipeline.naming import unsafe_name_reason
from ray_pipeline.schema import PipelineConfig

GENERIC_STEMS = frozenset({"train", "training", "data", "dataset", "all", "full", "trn"})
"""File names that say nothing of the data: the experiment is named after their directory."""
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass(frozen=True)
class InitFlags:
    """The ``ray-pipeline init`` command line."""

    data: DataFlags
    backbone: str | None = None
    out: Path | None = None
    name: str | None = None
    force: bool = False


@dataclass(frozen=True)
class InitResult:
    """What init wrote and why, the data report, and how to run it."""

    path: Path
    choices: tuple[str, ...]
    report: DataReport
    estimate: str


def init_experiment(flags: InitFlags, machine: Machine | None = None) -> InitResult:
    """Write one experiment YAML for ``flags.data`` (ConfigError, nothing written, when the
    data or a flag cannot be used)."""
    name = _experiment_name(flags)
    out = _out_path(flags, name)
    train = flags.data.train
    guess = infer_hub(flags.data) if train.is_dir() else infer_file(flags.data)
    backbones, why_backbone = resolve_backbone(flags.backbone)
    facts = _data_facts(guess, flags.data)
    spec = Spec(name, guess.data, backbones, {**guess.why, "backbones": why_backbone})
    draft = _validated(render(spec, _provisional(facts), None).text)
    model_configs = _probe(draft, flags.backbone)
    facts = replace(facts, percentiles=_longest(inspect_data(draft)))
    model = _model_facts(list(model_configs.values()))
    here = machine or Machine.here()
    sizes = size_run(facts, model, here)
    config = _validated(render(spec, sizes, None).text)
    check_max_length(config, model_configs, ("hpo", "benchmark", "final"))
    report = inspect_data(config)  # what `data inspect` says of the file written next
    rendered = render(spec, sizes, out.parent)
    _write(out, rendered.text, flags.force)
    return InitResult(
        path=out,
        choices=rendered.choices,
        report=report,
        estimate=estimate(sizes, facts, model, here).describe(sizes),
    )


def _experiment_name(flags: InitFlags) -> str:
    if flags.name is not None:
        reason = unsafe_name_reason(flags.name)
        if reason is not None:
            raise ConfigError.at("--name", f"{flags.name!r} {reason}")
        return flags.name
    train = flags.data.train.absolute()
    stem = train.name if train.is_dir() else train.stem
    if stem.lower() in GENERIC_STEMS and train.parent.name:
        stem = train.parent.name
    return _safe(stem, "experiment")


def _out_path(flags: InitFlags, name: str) -> Path:
    out = flags.out or Path(f"{name}.yaml")
    if out.is_dir():
        raise ConfigError.at("--out", f"{out} is a directory; give a file name ending in .yaml")
    if out.exists() and not flags.force:
        raise ConfigError.at(
            "--out", f"{out} exists; pass --force to overwrite it, or --out another path"
        )
    if not out.absolute().parent.is_dir():
        raise ConfigError.at("--out", f"directory {out.absolute().parent} does not exist")
    return out


# ------------------------------------------------------------------------------------ backbone


def resolve_backbone(name: str | None) -> tuple[list[dict[str, Any]], str]:
    """The backbone entries for ``--backbone`` (and why): a shipped model config's name
    (``config/model/<name>.yaml``), a directory holding a saved model, an installed package
    with ``get_model_path()``, or a Hugging Face Hub id. None: the offline demo model."""
    shipped = default_config_path().parent.parent / "model"
    if name is None:
        demo = default_config_path()
        model_file = demo.parent / str(read_yaml(demo)["include"]["model"])
        why = f"the demo's offline model ({model_file.name}); --backbone chooses another"
        return _shipped(model_file), why
    if (shipped / f"{name}.yaml").is_file():
        return _shipped(shipped / f"{name}.yaml"), f"the shipped config/model/{name}.yaml"
    path = Path(name).expanduser()
    if path.is_dir():
        return [{"name": _safe(path.resolve().name), "path": str(path.resolve())}], "--backbone"
    if name.isidentifier() and _has_model_path(name):
        return [{"name": _safe(name), "package": name}], "--backbone (an installed package)"
    if _HUB_ID.match(name):
        return [{"name": _safe(name.rpartition("/")[2]), "hub": name}], "--backbone (a Hub id)"
    known = ", ".join(sorted(p.stem for p in shipped.glob("*.yaml")))
    raise ConfigError.at(
        "--backbone",
        f"{name!r} is none of: a shipped model ({known}), a directory with a saved model, an "
        "installed package with get_model_path(), a Hugging Face Hub id (org/name)",
    )


def _shipped(model_file: Path) -> list[dict[str, Any]]:
    """A shipped model file's backbones, with local paths made absolute."""
    entries: list[dict[str, Any]] = read_yaml(model_file)["backbones"]
    for entry in entries:
        if "path" in entry:
            entry["path"] = str((model_file.parent / str(entry["path"])).resolve())
    return entries


def _has_model_path(module: str) -> bool:
    if importlib.util.find_spec(module) is None:
        return False
    return hasattr(importlib.import_module(module), "get_model_path")


def _safe(text: str, fallback: str = "model") -> str:
    """``text`` as a name that can be a directory name (``naming.unsafe_name_reason``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", text).replace("..", ".").strip("._-")
    return safe[:60] or fallback


def _probe(config: PipelineConfig, flag: str | None) -> dict[str, Any]:
    """Each backbone's config (its config.json only); a problem names ``--backbone``."""
    try:
        return probe_backbones(config)
    except ConfigError as exc:
        hint = "" if flag else "; or pass --backbone (a shipped model, a directory, a Hub id)"
        problems = [Problem("--backbone", f"{p.message}{hint}") for p in exc.problems]
        raise ConfigError(problems) from exc


def _model_facts(configs: Sequence[Any]) -> ModelFacts:
    limits = [t for t in map(max_tokens, configs) if t is not None]
    return ModelFacts(
        dense_params=max(dense_params(c) for c in configs),
        hidden_size=int(getattr(configs[0], "hidden_size", 768) or 768),
        positions=min(limits) if limits else None,
        count=len(configs),
    )


# ---------------------------------------------------------------------------------------- data


def _data_facts(guess: DataGuess, flags: DataFlags) -> DataFacts:
    """Row counts and the rarest label of the splits as the run reads them; ConfigError when a
    label has a single training example (no fold or holdout could hold it out)."""
    splits = load_splits(guess.data)
    counts = splits.train.label_counts()
    rarest = min(counts.values()) if isinstance(splits.train, TextExamples) else len(splits.train)
    if rarest < 2:
        single = sorted(label for label, n in counts.items() if n < 2)
        what = f"label(s) {', '.join(single[:10])}" if single else "the data"
        raise ConfigError.at(
            str(flags.train),
            f"{what} have a single training example: the search holds examples of every label "
            "out to score trials; add examples, or drop those rows",
        )
    return DataFacts(
        train_rows=len(splits.train),
        validation_rows=len(splits.validation) if splits.validation is not None else None,
        test_rows=len(splits.test),
        rarest=rarest,
        percentiles={},
        unit="rows" if isinstance(splits.train, TextExamples) else "sentences",
    )


def _longest(report: DataReport) -> dict[str, int]:
    """The token-length percentiles of the backbone whose tokenizer makes the texts longest."""
    return max((t.percentiles for t in report.token_lengths), key=lambda p: p.get("p95", 0))


def _provisional(facts: DataFacts) -> Sizes:
    """Sizes for the draft that probes the backbones and measures token lengths."""
    holdout = facts.validation_rows is not None
    return Sizes(
        max_length=16,
        evaluation="holdout" if holdout else "cv",
        k_folds=2,
        epochs=1,
        num_samples=1,
        search_rows=None,
        cpus_per_worker=1,
        gpus_per_worker=0,
        concurrent=1,
        learning_rate=(1e-5, 1e-4),
        why={},
    )


def _validated(text: str) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(yaml.safe_load(text))
    except ValidationError as exc:  # a flag's value the schema refuses (e.g. a column name)
        raise ConfigError.at("init", f"the config it would write is invalid: {exc}") from exc


def _write(out: Path, text: str, force: bool) -> None:
    """Write ``out`` (``x``: never over a file that appeared meanwhile, unless ``force``), then
    load it as ``run`` will; a file that does not load is removed again."""
    with out.open("w" if force else "x", encoding="utf-8") as handle:
        handle.write(text)
    try:
        load_config(out)
    except ConfigError as exc:
        out.unlink()
        raise PipelineError(f"init wrote a config that does not load (a bug): {exc}") from exc


def format_result(result: InitResult) -> str:
    """What init prints: its choices, the data report, the command and the estimate."""
    lines = ["init: each value chosen, and why:", *(f"  {c}" for c in result.choices)]
    lines += [f"wrote {result.path}", "", format_report(result.report), ""]
    command = f"ray-pipeline run --config {shlex.quote(str(result.path))}"
    return "\n".join([*lines, "run it:", f"  {command}", result.estimate])
