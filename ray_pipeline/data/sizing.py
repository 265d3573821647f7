"""Sizes for ``ray-pipeline init``, from the data and this machine: ``max_length`` from the
token lengths, cv or holdout, epochs, trials within a time budget, resources, and a rough
estimate of the run's time (rows x epochs x folds x trials at a per-step cost derived from
the backbone's size). Pure: no file is read here."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any, Literal

from ray_pipeline.resources import Node, plan_final, plan_trials
from ray_pipeline.schema import FinalResources, HpoConfig, ResourcesConfig, TrainingParams

BATCH: int = TrainingParams.model_fields["batch_size"].default
"""Examples per training step (``hpo.training.batch_size``)."""
DEFAULT_FOLDS: int = HpoConfig.model_fields["k_folds"].default
HOLDOUT: float = HpoConfig.model_fields["holdout_fraction"].default
CV_MAX_ROWS = 5000
"""Up to this many training rows trials are cross-validated; above, one holdout fit each."""
SEARCH_MAX_ROWS = 20000
"""Above this many training rows the search runs on a stratified subset of this size."""
SEARCH_BUDGET_S = 3600
"""``hpo.time_budget_s``: no trial starts after an hour of searching (running ones finish)."""
MIN_TRIALS, MAX_TRIALS = 4, 16
DEFAULT_LIMIT = 512
"""``max_length`` cap for a backbone without a fixed number of positions."""

CPU_FLOPS = 3e10
"""Training FLOP/s of one CPU thread; calibrated on the demo (MiniLM, 2-core AMD EPYC)."""
GPU_FLOPS = 2e13
"""Training FLOP/s of one GPU for a small model (far below its peak: rough)."""
STEP_OVERHEAD_S = {"cpu": 0.015, "gpu": 0.03}
"""Per-step cost of a tiny model: Python, the optimizer, kernel launches."""
FIT_OVERHEAD_S, STARTUP_S, BENCHMARK_S = 5.0, 30.0, 20.0
"""Model loading and checkpoints per fit; Ray and MLflow start-up; one benchmark."""


@dataclass(frozen=True)
class Machine:
    """The CPUs and GPUs the run will have (init assumes it runs here)."""

    cpus: int
    gpus: int = 0

    @classmethod
    def here(cls) -> Machine:
        import torch

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return cls(cpus=cpus or os.cpu_count() or 1, gpus=torch.cuda.device_count())

    def describe(self) -> str:
        return f"{self.cpus} CPU(s), " + (f"{self.gpus} GPU(s)" if self.gpus else "no GPU")


@dataclass(frozen=True)
class DataFacts:
    """What the sizes depend on in the data (the run's splits as read)."""

    train_rows: int
    validation_rows: int | None
    test_rows: int
    rarest: int
    """Examples of the rarest label (token classification: sentences)."""
    percentiles: dict[str, int]
    """Token lengths of the training texts (``p50`` ... ``p99``); empty when unknown."""
    unit: str = "rows"
    """What an example is called: rows, or sentences (token classification)."""


@dataclass(frozen=True)
class ModelFacts:
    """What the sizes depend on in the backbones (their configs)."""

    dense_params: int
    """Weights a token passes through (the largest backbone's, embeddings aside)."""
    hidden_size: int
    positions: int | None
    """Tokens the backbones' position embeddings cover (the fewest); None: no fixed limit."""
    count: int = 1


@dataclass(frozen=True)
class Sizes:
    """The sizes init writes, each with the reason (by config key)."""

    max_length: int
    evaluation: Literal["cv", "holdout"]
    k_folds: int
    epochs: int
    num_samples: int
    search_rows: int | None
    cpus_per_worker: int
    gpus_per_worker: int
    concurrent: int
    learning_rate: tuple[float, float]
    why: dict[str, str]

    @property
    def folds(self) -> int:
        return self.k_folds if self.evaluation == "cv" else 1

    @property
    def n_startup_trials(self) -> int:
        """Random trials before TPE models the rest: half of them (Optuna's default is 10)."""
        return max(1, min(10, self.num_samples // 2))


def dense_params(config: Any) -> int:
    """Weights per layer (attention and feed-forward) x layers, read from a transformers
    config (BERT-style names, DistilBERT's, T5's)."""
    hidden = _first(config, ("hidden_size", "dim", "d_model"), 768)
    layers = _first(config, ("num_hidden_layers", "n_layers", "num_layers"), 12)
    inner = _first(config, ("intermediate_size", "hidden_dim", "d_ff"), 4 * hidden)
    return layers * (4 * hidden * hidden + 2 * hidden * inner)


def _first(config: Any, names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def step_seconds(model: ModelFacts, max_length: int, threads: int, gpus: int) -> float:
    """One training step of ``BATCH`` rows padded to ``max_length``: forward and backward
    take ~6 FLOPs per weight and token."""
    flops = GPU_FLOPS * gpus if gpus else CPU_FLOPS * threads**0.85
    work = 6 * model.dense_params * BATCH * max_length / flops
    return STEP_OVERHEAD_S["gpu" if gpus else "cpu"] + work


def size_run(data: DataFacts, model: ModelFacts, machine: Machine) -> Sizes:
    """Every size init chooses, from the data, the backbones and this machine."""
    why: dict[str, str] = {}
    evaluation, k = _evaluation(data, why)
    search_rows = _search_rows(data, why)
    cpw, gpw, concurrent = _resources(machine, why)
    sizes = Sizes(
        max_length=_max_length(data, model, why),
        evaluation=evaluation,
        k_folds=k,
        epochs=_epochs(search_rows or data.train_rows, data.unit, why),
        num_samples=MIN_TRIALS,
        search_rows=search_rows,
        cpus_per_worker=cpw,
        gpus_per_worker=gpw,
        concurrent=concurrent,
        learning_rate=_learning_rate(model.hidden_size, why),
        why=why,
    )
    trials = _trials(trial_seconds(sizes, data, model) * model.count, concurrent, why)
    return replace(sizes, num_samples=trials)


def _trials(trial_s: float, concurrent: int, why: dict[str, str]) -> int:
    """As many trials as fit the search budget, at least MIN_TRIALS, at most MAX_TRIALS, a
    multiple of the trials that run at once."""
    fitting = math.floor(SEARCH_BUDGET_S * concurrent / max(trial_s, 1e-9))
    trials = max(MIN_TRIALS, min(MAX_TRIALS, fitting))
    trials = min(MAX_TRIALS, math.ceil(trials / concurrent) * concurrent)
    why["num_samples"] = (
        f"as many trials as fit {SEARCH_BUDGET_S // 60} min here ({MIN_TRIALS} to {MAX_TRIALS}; "
        f"~{minutes(trial_s)} each, {concurrent} at a time)"
    )
    why["time_budget_s"] = "no trial starts after an hour of searching; running ones finish"
    return trials


def _max_length(data: DataFacts, model: ModelFacts, why: dict[str, str]) -> int:
    limit = model.positions or DEFAULT_LIMIT
    p95 = data.percentiles.get("p95")
    if p95 is None:
        chosen = min(128, limit)
        why["max_length"] = "token lengths unknown (no tokenizer): 128"
    else:
        chosen = min(limit, max(16, math.ceil(p95 / 8) * 8))
        why["max_length"] = f"the training texts' 95th token-length percentile ({p95}), rounded up"
        if chosen == limit:
            why["max_length"] += f", capped at the backbone's {limit} positions"
    return chosen


def _evaluation(data: DataFacts, why: dict[str, str]) -> tuple[Literal["cv", "holdout"], int]:
    k = min(DEFAULT_FOLDS, data.rarest)  # with holdout, only `data inspect` shows folds
    if data.validation_rows is not None:
        rows = f"{data.validation_rows:,} {data.unit}"
        why["evaluation"] = f"every trial scored on the validation split ({rows})"
        return "holdout", k
    if data.train_rows > CV_MAX_ROWS:
        why["evaluation"] = (
            f"{data.train_rows:,} training {data.unit}: one fit per trial, scored on a "
            f"{HOLDOUT:.0%} holdout (k folds would cost k fits)"
        )
        return "holdout", k
    rare = f"; the rarest label has {data.rarest}" if k < DEFAULT_FOLDS else ""
    rows = f"{data.train_rows:,} training {data.unit}"
    why["evaluation"] = f"{rows}: {k}-fold cross-validation{rare}"
    return "cv", k


def _search_rows(data: DataFacts, why: dict[str, str]) -> int | None:
    share = SEARCH_MAX_ROWS / data.train_rows
    if data.train_rows <= SEARCH_MAX_ROWS or data.rarest * share < 5:
        return None
    why["max_train_examples"] = (
        f"the search trains on a stratified {SEARCH_MAX_ROWS:,} of the {data.train_rows:,} "
        "rows; final training on all"
    )
    return SEARCH_MAX_ROWS


def _epochs(rows: int, unit: str, why: dict[str, str]) -> int:
    epochs = 5 if rows <= 1000 else 3 if rows <= 10000 else 2
    why["epochs"] = f"{rows:,} training {unit} (the fewer, the more passes)"
    return epochs


def _resources(machine: Machine, why: dict[str, str]) -> tuple[int, int, int]:
    gpw = 1 if machine.gpus else 0
    cpw = max(1, min(4, machine.cpus // machine.gpus)) if machine.gpus else 1
    plan = plan_trials(_trial_resources(cpw, gpw), [Node(machine.cpus, machine.gpus)])
    each = "one GPU" if gpw else "one core"
    why["resources"] = (
        f"this machine: {machine.describe()}; {each} per trial, "
        f"{plan.max_concurrent_trials} at a time"
    )
    return cpw, gpw, plan.max_concurrent_trials


def _trial_resources(cpus: int, gpus: int) -> ResourcesConfig:
    return ResourcesConfig(cpus_per_worker=cpus, gpus_per_worker=gpus)


def _learning_rate(hidden: int, why: dict[str, str]) -> tuple[float, float]:
    if hidden < 128:
        bounds = (1e-4, 3e-3)
    elif hidden <= 512:
        bounds = (5e-5, 5e-4)  # MiniLM leaves the majority class only at high rates
    else:
        bounds = (1e-5, 1e-4)
    why["learning_rate"] = f"for a backbone {hidden} wide (smaller ones take higher rates)"
    return bounds


def trial_seconds(sizes: Sizes, data: DataFacts, model: ModelFacts) -> float:
    """One trial: its fits (k folds, or one holdout fit), each epochs of steps and a scoring."""
    rows = sizes.search_rows or data.train_rows
    if sizes.evaluation == "cv":
        fit, scored = rows * (sizes.k_folds - 1) / sizes.k_folds, rows / sizes.k_folds
    elif data.validation_rows is not None:
        fit, scored = rows, data.validation_rows
    else:
        fit, scored = rows * (1 - HOLDOUT), rows * HOLDOUT
    step = step_seconds(model, sizes.max_length, sizes.cpus_per_worker, sizes.gpus_per_worker)
    return sizes.folds * _fit_seconds(fit, scored, sizes.epochs, step)


def _fit_seconds(rows: float, scored: float, epochs: int, step: float) -> float:
    """Epochs of training steps, then scoring (a forward pass: ~1/3 of a step)."""
    return (
        epochs * math.ceil(rows / BATCH) * step
        + math.ceil(scored / BATCH) * step / 3
        + (FIT_OVERHEAD_S)
    )


@dataclass(frozen=True)
class Estimate:
    """A rough duration of the whole run here, by part."""

    hpo_s: float
    final_s: float
    other_s: float
    step_s: float

    @property
    def total_s(self) -> float:
        return self.hpo_s + self.final_s + self.other_s

    def describe(self, sizes: Sizes) -> str:
        return (
            f"roughly {minutes(self.total_s)} here (a rough estimate, often off by 2x: the "
            f"search ~{minutes(self.hpo_s)} = {sizes.num_samples} trials x {sizes.folds} "
            f"fit(s) x {sizes.epochs} epochs at ~{self.step_s:.2g} s per step of {BATCH} rows "
            f"x {sizes.max_length} tokens, {sizes.concurrent} at a time; final training "
            f"~{minutes(self.final_s)}; start-up and benchmark ~{minutes(self.other_s)})"
        )


def estimate(sizes: Sizes, data: DataFacts, model: ModelFacts, machine: Machine) -> Estimate:
    """How long ``ray-pipeline run`` should take here, from rows x epochs x folds x trials."""
    waves = math.ceil(sizes.num_samples / sizes.concurrent)
    hpo = model.count * waves * trial_seconds(sizes, data, model)
    final = plan_final(
        FinalResources(),
        _trial_resources(sizes.cpus_per_worker, sizes.gpus_per_worker),
        [Node(machine.cpus, machine.gpus)],
    )
    threads = final.workers * int(final.cpus_per_worker or 1)
    step = step_seconds(model, sizes.max_length, threads, final.workers if machine.gpus else 0)
    rows = data.train_rows + (data.validation_rows or 0)
    final_s = _fit_seconds(rows, data.test_rows, sizes.epochs, step)
    other = STARTUP_S + model.count * BENCHMARK_S
    trial_step = step_seconds(model, sizes.max_length, sizes.cpus_per_worker, sizes.gpus_per_worker)
    return Estimate(hpo_s=hpo, final_s=final_s, other_s=other, step_s=trial_step)


def minutes(seconds: float) -> str:
    """A duration as a person says it: 40 s, 12 min, 2.5 h."""
    if seconds < 90:
        return f"{max(1, round(seconds / 10) * 10)} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
