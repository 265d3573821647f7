"""Selection rules on hand-built candidates: pure logic, no Ray, no files."""

from __future__ import annotations

import pytest

from ray_pipeline.cli import main
from ray_pipeline.errors import ConfigError
from ray_pipeline.selection import Candidate, SelectionRules, cache_key, explain, select_best
from tests.builders import fold_result, trial_record
from tests.conftest import MakeExp


def _candidate(variant: str, objective: float, latency: float, parameters: int = 1000) -> Candidate:
    trial = trial_record(0, objective, variant=variant, std=0.01, checkpoint=f"/x/{variant}/best")
    return Candidate(
        trial=trial,
        objective=objective,
        objective_std=0.01,
        latency_ms=latency,
        parameters=parameters,
        size_mb=parameters / 1e6,
        hpo_file=f"/x/{variant}/hpo.json",
        benchmark_file=f"/x/{variant}/benchmark.json",
        inputs_sha256=f"d-{variant}",
    )


BIG = _candidate("hpo_large", 0.91, latency=40.0, parameters=300)
MID = _candidate("hpo_base", 0.88, latency=12.0, parameters=100)
SMALL = _candidate("hpo_small", 0.80, latency=3.0, parameters=20)


def _rules(**changes: object) -> SelectionRules:
    base = SelectionRules(
        metric="macro_f1",
        direction="maximize",
        max_latency_ms=None,
        latency_batch_size=1,
        latency_weight=0.0,
    )
    return SelectionRules.model_validate({**base.model_dump(), **changes})


def test_objective_alone_picks_the_most_accurate() -> None:
    ranked = select_best([SMALL, BIG, MID], _rules())
    assert [s.candidate.variant for s in ranked] == ["hpo_large", "hpo_base", "hpo_small"]
    assert ranked[0].verdict == "winner"
    assert ranked[1].verdict == "lower macro_f1: 0.8800 vs the winner's 0.9100"


def test_latency_limit_flips_the_choice_and_the_record_says_why() -> None:
    rules = _rules(max_latency_ms=15.0)
    ranked = select_best([SMALL, BIG, MID], rules)
    assert ranked[0].candidate is MID
    loser = next(s for s in ranked if s.candidate is BIG)
    assert not loser.feasible and loser.score is None and loser.rank == 3
    assert loser.verdict == "p95 40.00 ms at batch 1 exceeds max_latency_ms 15"
    text = explain(ranked, rules)
    assert text.startswith("hpo_base trial 0 (base) wins with macro_f1 0.8800")
    assert "2 met the limit p95 <= 15 ms" in text
    assert "hpo_large: p95 40.00 ms at batch 1 exceeds max_latency_ms 15" in text


def test_weighted_trade_off_prefers_the_fast_model() -> None:
    # normalised objective: large 1, base 0.727, small 0; latency: large 1, base 0.243, small 0
    ranked = select_best([SMALL, BIG, MID], _rules(latency_weight=1.0))
    assert [s.candidate.variant for s in ranked] == ["hpo_base", "hpo_small", "hpo_large"]
    assert ranked[0].score == pytest.approx(0.7273 - 0.2432, abs=1e-3)
    assert ranked[1].verdict.startswith("lower trade-off score 0.0000")


def test_minimise_direction() -> None:
    ranked = select_best([SMALL, BIG, MID], _rules(metric="loss", direction="minimize"))
    assert [s.candidate for s in ranked] == [SMALL, MID, BIG]
    assert ranked[1].verdict == "higher loss: 0.8800 vs the winner's 0.8000"


def test_a_latency_weight_with_a_minimised_metric_still_prefers_the_lower_loss() -> None:
    # Losses 0.20 (best) to 0.60 (worst); the fastest model has the worst loss. Normalised with
    # lower loss = 1: low 1, mid 0.5, high 0; latency: low 1, mid 0.5, high 0 (slowest = 1).
    low = _candidate("hpo_low", 0.20, latency=30.0)
    mid = _candidate("hpo_mid", 0.40, latency=20.0)
    high = _candidate("hpo_high", 0.60, latency=10.0)
    rules = _rules(metric="loss", direction="minimize", latency_weight=0.4)
    ranked = select_best([high, mid, low], rules)
    assert [s.candidate.variant for s in ranked] == ["hpo_low", "hpo_mid", "hpo_high"]
    assert [s.score for s in ranked] == pytest.approx([0.6, 0.3, 0.0])
    # A weight above 1 makes the fastest win: latency now counts for more than the loss.
    heavy = select_best(
        [high, mid, low], _rules(metric="loss", direction="minimize", latency_weight=2.0)
    )
    assert [s.candidate.variant for s in heavy] == ["hpo_high", "hpo_mid", "hpo_low"]


def test_ties_go_to_lower_latency_then_smaller_model() -> None:
    fast = _candidate("hpo_fast", 0.9, latency=5.0, parameters=500)
    slow = _candidate("hpo_slow", 0.9, latency=6.0, parameters=10)
    lean = _candidate("hpo_lean", 0.9, latency=5.0, parameters=100)
    ranked = select_best([slow, fast, lean], _rules())
    assert [s.candidate.variant for s in ranked] == ["hpo_lean", "hpo_fast", "hpo_slow"]
    assert ranked[1].verdict == "tied score and latency; larger: 500 vs 100 parameters"
    assert ranked[2].verdict == "tied score; slower: p95 6.00 ms vs 5.00 ms"


def test_no_candidate_within_the_limit_names_the_fastest() -> None:
    with pytest.raises(ConfigError) as info:
        select_best([SMALL, BIG, MID], _rules(max_latency_ms=1.0))
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "selection.max_latency_ms" in message and "hpo_small trial 0, takes 3.00 ms" in message


def test_cache_key_covers_rules_and_inputs() -> None:
    key = cache_key([SMALL, BIG], _rules())
    assert key == cache_key([BIG, SMALL], _rules())  # order does not matter
    assert key != cache_key([SMALL, BIG], _rules(max_latency_ms=50.0))
    changed = SMALL.model_copy(update={"inputs_sha256": "other"})
    assert key != cache_key([changed, BIG], _rules())


def _spread(candidate: Candidate, std: float, folds: int) -> Candidate:
    """``candidate`` with a fold spread: ``std`` over ``folds`` folds."""
    fold = fold_result(0, candidate.objective)
    trial = candidate.trial.model_copy(update={"folds": [fold] * folds, "objective_std": std})
    return candidate.model_copy(update={"trial": trial, "objective_std": std})


def test_one_standard_error_picks_the_fastest_candidate_within_it() -> None:
    # BIG's standard error: 0.06 (population std of 4 folds) / sqrt(3) = 0.0346, so MID
    # (0.88 >= 0.91 - 0.0346) ties with it and is faster; SMALL (0.80) does not.
    big = _spread(BIG, 0.06, 4)
    rules = _rules(rule="one_standard_error")
    ranked = select_best([SMALL, big, MID], rules)
    assert [s.candidate.variant for s in ranked] == ["hpo_base", "hpo_large", "hpo_small"]
    assert ranked[1].verdict.startswith("macro_f1 0.9100, within one standard error of the best")
    text = explain(ranked, rules)
    assert (
        "rule one_standard_error: macro_f1 within 0.0346 (one standard error) of the best" in text
    )
    # A tighter spread: SE 0.02 / sqrt(3) = 0.0115, MID is out and the most accurate wins.
    assert select_best([SMALL, _spread(BIG, 0.02, 4), MID], rules)[0].candidate == _spread(
        BIG, 0.02, 4
    )
    assert select_best([SMALL, big, MID], _rules())[0].candidate == big  # rule best


def test_one_standard_error_when_lower_is_better() -> None:
    # Losses: 0.20 ± SE 0.0577 (0.1 / sqrt 3); 0.24 is within it and faster, 0.30 is not.
    best = _spread(_candidate("hpo_a", 0.20, latency=30.0), 0.1, 4)
    near = _candidate("hpo_b", 0.24, latency=10.0)
    far = _candidate("hpo_c", 0.30, latency=1.0)
    rules = _rules(metric="loss", direction="minimize", rule="one_standard_error")
    assert [s.candidate.variant for s in select_best([far, best, near], rules)] == [
        "hpo_b",
        "hpo_a",
        "hpo_c",
    ]


def test_one_standard_error_and_a_latency_weight_are_refused(
    smoke_experiment: MakeExp, capsys: pytest.CaptureFixture[str]
) -> None:
    path = smoke_experiment()
    args = ["validate", "--config", str(path), "selection.rule=one_standard_error"]
    assert main([*args, "selection.latency_weight=0.5"]) == 2
    assert "one_standard_error already trades the objective for latency" in capsys.readouterr().err
    assert main(args) == 0
