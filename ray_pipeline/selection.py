"""Best-model selection: one winner across backbones and variants, with the reasons.

Candidates are the best trials of the benchmarked variants the benchmark strategy covers.
Rules (``best_model_selection.yaml``): an optional hard limit on p95 latency at one batch size;
then the objective, or with ``latency_weight > 0`` a trade-off score ``objective' - w *
latency'`` over min-max normalised values (objective' oriented so higher is better), or with
``rule: one_standard_error`` the best objective for every candidate within one standard error
of it; ties go to lower latency, then the smaller model. ``select_best`` is pure (no Ray, no
files).

``selection/selection.json`` records the winner, every candidate with its score and why it
lost, and a cache key over the rules and the bytes of every candidate's hpo.json and
benchmark.json: run.mode ``reuse_if_exists`` reuses it while that key holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Literal

from pydantic import Field

from ray_pipeline import run_tree, tracking
from ray_pipeline.artifacts import Record, read_json, write_json
from ray_pipeline.benchmark.scope import variants_in_scope
from ray_pipeline.direction import Direction
from ray_pipeline.errors import ConfigError
from ray_pipeline.hpo.results import TrialRecord
from ray_pipeline.identity import file_digest, stable_hash
from ray_pipeline.paths import OutputsLayout
from ray_pipeline.run_mode import get_run_mode
from ray_pipeline.schema import PipelineConfig, resolved


class SelectionRules(Record):
    """The rules in force (the selection config with the objective resolved)."""

    metric: str
    direction: Direction
    max_latency_ms: float | None
    latency_batch_size: int
    latency_weight: float
    rule: Literal["best", "one_standard_error"] = "best"


class Candidate(Record):
    """The best trial of one benchmarked variant, with the numbers the rules compare."""

    trial: TrialRecord
    """As HPO recorded it (``hpo.json``)."""
    objective: float
    """Cross-validated mean of the rules' metric."""
    objective_std: float
    latency_ms: float
    """p95 latency per batch at the rules' batch size."""
    parameters: int
    size_mb: float
    hpo_file: str
    benchmark_file: str
    inputs_sha256: str
    """Digest of this candidate's hpo.json + benchmark.json bytes (part of the cache key)."""
    benchmark_run_id: str | None = None

    @property
    def variant(self) -> str:
        return self.trial.variant


class Scored(Record):
    """A candidate's fate under the rules."""

    candidate: Candidate
    feasible: bool
    score: float | None
    """Higher is better; None when a hard constraint excludes it."""
    rank: int
    verdict: str
    """``winner``, or why it lost."""


class SelectionResult(Record):
    """``selection/selection.json``."""

    cache_key: str
    rules: SelectionRules
    winner: Candidate
    candidates: list[Scored]
    reasoning: str
    created_at: str
    mlflow_run_id: str | None = None
    skipped: list[str] = Field(default_factory=list)
    """The HPO variants that were not candidates, each with why (failed, running, no kept
    best checkpoint)."""


def rules_of(config: PipelineConfig) -> SelectionRules:
    selection = config.selection
    objective = resolved(selection.objective, "selection.objective")  # null: the HPO one
    return SelectionRules(
        metric=objective.metric,
        direction=objective.direction,
        max_latency_ms=selection.max_latency_ms,
        latency_batch_size=selection.latency_batch_size,
        latency_weight=selection.latency_weight,
        rule=selection.rule,
    )


def _normalised(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    return [0.0 if high == low else (v - low) / (high - low) for v in values]


def _verdict(
    c: Candidate, score: float, win: Candidate, win_score: float, r: SelectionRules
) -> str:
    if score < win_score:
        if r.latency_weight == 0:
            return (
                f"{r.direction.worse_word} {r.metric}: {c.objective:.4f} vs the winner's "
                f"{win.objective:.4f}"
            )
        return (
            f"lower trade-off score {score:.4f} vs the winner's {win_score:.4f} "
            f"({r.metric} {c.objective:.4f}, p95 {c.latency_ms:.2f} ms)"
        )
    if c.latency_ms > win.latency_ms:
        tied = (
            f"{r.metric} {c.objective:.4f}, within one standard error of the best"
            if r.rule == "one_standard_error"
            else "tied score"
        )
        return f"{tied}; slower: p95 {c.latency_ms:.2f} ms vs {win.latency_ms:.2f} ms"
    if c.parameters > win.parameters:
        return f"tied score and latency; larger: {c.parameters} vs {win.parameters} parameters"
    return "tied on every rule; ordered by name"


def select_best(candidates: Sequence[Candidate], rules: SelectionRules) -> list[Scored]:
    """Every candidate scored and ranked, the winner first. Raises ConfigError when no
    candidate meets the latency limit (naming the closest one)."""
    if not candidates:
        raise ConfigError.at("selection", "no candidates: no HPO variant has a benchmarked best")
    limit = rules.max_latency_ms
    feasible = [c for c in candidates if limit is None or c.latency_ms <= limit]
    if not feasible:
        fastest = min(candidates, key=lambda c: c.latency_ms)
        raise ConfigError.at(
            "selection.max_latency_ms",
            f"no candidate meets p95 <= {limit:g} ms at batch {rules.latency_batch_size}; the "
            f"fastest, {fastest.trial.label}, takes {fastest.latency_ms:.2f} "
            "ms. Raise the limit, or benchmark a smaller model",
        )
    oriented = [rules.direction.oriented(c.objective) for c in feasible]
    if rules.latency_weight > 0:
        lat = _normalised([c.latency_ms for c in feasible])
        obj = _normalised(oriented)
        scores = [o - rules.latency_weight * t for o, t in zip(obj, lat, strict=True)]
    elif rules.rule == "one_standard_error":
        top, error = _one_standard_error(feasible, oriented)
        scores = [top if o >= top - error else o for o in oriented]
    else:
        scores = oriented
    ranked = sorted(
        zip(feasible, scores, strict=True),
        key=lambda cs: (
            -cs[1],
            cs[0].latency_ms,
            cs[0].parameters,
            cs[0].size_mb,
            cs[0].variant,
            cs[0].trial.number,
        ),
    )
    winner, win_score = ranked[0]
    out = [Scored(candidate=winner, feasible=True, score=win_score, rank=1, verdict="winner")]
    for rank, (c, score) in enumerate(ranked[1:], start=2):
        verdict = _verdict(c, score, winner, win_score, rules)
        out.append(Scored(candidate=c, feasible=True, score=score, rank=rank, verdict=verdict))
    for c in sorted((c for c in candidates if c not in feasible), key=lambda c: c.latency_ms):
        verdict = (
            f"p95 {c.latency_ms:.2f} ms at batch {rules.latency_batch_size} exceeds "
            f"max_latency_ms {limit:g}"
        )
        out.append(
            Scored(candidate=c, feasible=False, score=None, rank=len(out) + 1, verdict=verdict)
        )
    return out


def _one_standard_error(
    candidates: Sequence[Candidate], oriented: Sequence[float]
) -> tuple[float, float]:
    """The best oriented objective and its standard error: the sample standard deviation of the
    best candidate's fold scores over the square root of its folds (``objective_std`` is the
    population one: std / sqrt(k - 1)); 0 with a single fold."""
    index = max(range(len(oriented)), key=oriented.__getitem__)
    best = candidates[index]
    folds = len(best.trial.folds)
    return oriented[index], best.objective_std / math.sqrt(folds - 1) if folds > 1 else 0.0


def explain(ranked: Sequence[Scored], rules: SelectionRules) -> str:
    """One paragraph: who won, under which rules, and why the others lost."""
    win = ranked[0].candidate
    feasible = sum(s.feasible for s in ranked)
    text = (
        f"{win.trial.label} ({win.trial.backbone}) wins with {rules.metric} "
        f"{win.objective:.4f} ± {win.objective_std:.4f} ({rules.direction}) and p95 "
        f"{win.latency_ms:.2f} ms at batch {rules.latency_batch_size}, out of {len(ranked)} "
        "candidate(s)"
    )
    if rules.max_latency_ms is not None:
        text += f"; {feasible} met the limit p95 <= {rules.max_latency_ms:g} ms"
    if rules.latency_weight > 0:
        text += (
            f"; score = normalised {rules.metric} - {rules.latency_weight:g} x normalised latency"
        )
    if rules.rule == "one_standard_error":
        feasible_ones = [s.candidate for s in ranked if s.feasible]
        oriented = [rules.direction.oriented(c.objective) for c in feasible_ones]
        top, error = _one_standard_error(feasible_ones, oriented)
        text += (
            f"; rule one_standard_error: {rules.metric} within {error:.4f} (one standard error) "
            f"of the best, {rules.direction.oriented(top):.4f}, counts as tied, and the fastest "
            "of those wins"
        )
    losers = "; ".join(f"{_name(s.candidate, ranked)}: {s.verdict}" for s in ranked[1:])
    return text + (f". Others: {losers}." if losers else ".")


def _name(candidate: Candidate, ranked: Sequence[Scored]) -> str:
    """The candidate's variant, or with several candidates from that variant (its Pareto front)
    its trial label."""
    same = sum(s.candidate.variant == candidate.variant for s in ranked)
    return candidate.trial.label if same > 1 else candidate.variant


def _objective(best: TrialRecord, metric: str) -> tuple[float, float]:
    """The rules' metric of a variant's best trial: its mean and spread over the folds."""
    found = best.objective_of(metric)
    if found is None:
        recorded = sorted({k for fold in best.folds for k in fold.metrics}) or ["none"]
        raise ConfigError.at(
            "selection.objective.metric",
            f"{best.label} recorded no {metric} (its folds recorded: {', '.join(recorded)}); "
            "choose one of those, or leave selection.objective unset to use the search's",
        )
    return found


def gather_candidates(
    config: PipelineConfig, rules: SelectionRules
) -> tuple[list[Candidate], list[str]]:
    """The candidates on disk, and a note on each HPO variant that is not one; a variant in
    scope without a current benchmark is an error."""
    targets, skipped = variants_in_scope(config)
    problems, out = [], []
    for target in targets:
        bench = target.current
        if bench is None:
            problems.append(f"{target.variant.name} ({target.stale})")
            continue
        timing = bench.at_batch(rules.latency_batch_size)
        assert timing is not None  # the schema requires the rules' batch size be benchmarked
        objective, std = _objective(target.trial, rules.metric)
        digest = stable_hash([file_digest(target.hpo_file), file_digest(target.benchmark_file)])
        out.append(
            Candidate(
                trial=target.trial,
                objective=objective,
                objective_std=std,
                latency_ms=timing.p95_ms,
                parameters=bench.parameters,
                size_mb=bench.size_mb,
                hpo_file=str(target.hpo_file),
                benchmark_file=str(target.benchmark_file),
                inputs_sha256=digest,
                benchmark_run_id=bench.mlflow_run_id,
            )
        )
    if problems:
        raise ConfigError.at(
            "selection",
            f"variant(s) without a current benchmark: {', '.join(problems)}; run "
            "`ray-pipeline benchmark` first (or `ray-pipeline run --stages benchmark,select`)",
        )
    if not out:
        raise ConfigError.at(
            "selection",
            "no candidates: no complete HPO variant with a best trial"
            + (f" (skipped: {'; '.join(skipped)})" if skipped else "")
            + "; run `ray-pipeline hpo`",
        )
    return out, skipped


def cache_key(candidates: Sequence[Candidate], rules: SelectionRules) -> str:
    inputs = sorted((c.variant, c.trial.number, c.inputs_sha256) for c in candidates)
    return stable_hash({"rules": rules.model_dump(mode="json"), "inputs": inputs})


def check_select(config: PipelineConfig, stages: Sequence[str]) -> None:
    """Run alone, selection needs its candidates on disk now; after HPO or benchmark in the
    same run, they are checked when it runs."""
    if "hpo" not in stages and "benchmark" not in stages:
        gather_candidates(config, rules_of(config))


def run_select(config: PipelineConfig, prepared: object = None) -> SelectionResult:
    """Select (or reuse the cached selection) and write ``selection/selection.json``."""
    rules = rules_of(config)
    candidates, skipped = gather_candidates(config, rules)
    for note in skipped:
        print(f"select: skipped {note}")
    key = cache_key(candidates, rules)
    path = OutputsLayout.of(config).selection_file
    if get_run_mode(config.selection) == "reuse_if_exists" and path.is_file():
        cached = read_json(path, SelectionResult)
        if cached.cache_key == key:
            print(f"select: inputs unchanged, reusing {path}")
            print(f"select: {cached.reasoning}")
            return cached
        print("select: inputs changed since the cached selection; selecting again")
    ranked = select_best(candidates, rules)
    result = SelectionResult(
        cache_key=key,
        rules=rules,
        winner=ranked[0].candidate,
        candidates=ranked,
        reasoning=explain(ranked, rules),
        skipped=skipped,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    with tracking.tracked(_open_run(config, result)) as run:
        if run is not None:
            result = result.model_copy(update={"mlflow_run_id": run.run_id})
        write_json(path, result)
        if run is not None:
            tracking.log_artifact(run, str(path))
    print(f"select: {result.reasoning}")
    print(f"select: wrote {path}")
    return result


def _open_run(config: PipelineConfig, result: SelectionResult) -> tracking.RunRef | None:
    win = result.winner
    winner = win.trial.origin()
    run = run_tree.open_selection_run(config, result.cache_key, winner, win.benchmark_run_id)
    if run is not None:
        metrics = {"objective": win.objective, "latency_ms": win.latency_ms}
        params = {**result.rules.model_dump(), "winner": f"{win.variant}/trial_{win.trial.number}"}
        tracking.log(run, metrics={**metrics, "candidates": len(result.candidates)}, params=params)
    return run
