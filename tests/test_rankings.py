"""Which trial wins: the HPO stage's ranking of a real Optuna study's trials, in both
directions, with pruned and failed trials that scored better than every complete one (they
must never win). Trials never tie, and the winner is neither the first nor the last trial, so
a ranking that flips its direction or takes a fixed trial fails here. The same ranking on a
real search, its ``best/`` model and what later stages consume: tests/test_hpo_ray.py."""

from __future__ import annotations

import optuna
import pytest

from ray_pipeline.hpo.collect import collect
from ray_pipeline.hpo.results import FoldState
from ray_pipeline.hpo.stage import _job
from ray_pipeline.hpo.trial_report import TrialOutcome, TrialReport
from ray_pipeline.identity import study_key
from ray_pipeline.loading import load_config
from ray_pipeline.variants import create_variant, stage_place
from tests.builders import fold_result
from tests.conftest import MakeExp

LR = optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)


# (Optuna state, fold scores). For maximize the best complete trial is 2 (mean 0.70); the
# pruned trial 3 (0.90, one fold) and the failed trial 4 (0.95) scored higher. For minimize the
# best complete trial is 1 (0.40); the pruned and failed trials 5 and 6 scored lower.
TRIALS = [
    ("COMPLETE", [0.62, 0.58]),  # 0: mean 0.60
    ("COMPLETE", [0.38, 0.42]),  # 1: mean 0.40
    ("COMPLETE", [0.66, 0.74]),  # 2: mean 0.70
    ("PRUNED", [0.90]),  # 3
    ("FAIL", [0.95]),  # 4
    ("PRUNED", [0.10]),  # 5
    ("FAIL", [0.05]),  # 6
    ("COMPLETE", [0.52, 0.48]),  # 7: mean 0.50
]


@pytest.mark.parametrize(("direction", "winner"), [("maximize", 2), ("minimize", 1)])
def test_the_best_trial_is_the_extreme_complete_trial(
    smoke_experiment: MakeExp, direction: str, winner: int
) -> None:
    config = load_config(smoke_experiment(), [f"hpo.objective.direction={direction}"])
    backbone = config.model.backbones[0]
    place = stage_place(config, "hpo", backbone.name)
    variant = create_variant(*place, "hpo", backbone.name, study_key(config, backbone))
    study = optuna.create_study(direction=optuna.study.StudyDirection[direction.upper()])
    outcomes = {}
    for number, (state, scores) in enumerate(TRIALS):
        complete = state == "COMPLETE"
        study.add_trial(
            optuna.trial.create_trial(
                params={"learning_rate": 1e-4 * (number + 1)},
                distributions={"learning_rate": LR},
                value=sum(scores) / len(scores) if complete else None,
                state=optuna.trial.TrialState[state],
            )
        )
        folds = [fold_result(k, score) for k, score in enumerate(scores)]
        best_fold = max(range(len(scores)), key=scores.__getitem__)
        fold_state = FoldState(folds=folds, best_fold=best_fold)
        report = TrialReport.of(
            fold_state, step=len(folds), fold=len(folds) - 1, epoch=0, train_loss=0.1
        )
        outcomes[number] = TrialOutcome(report)

    job = _job(config, backbone, variant.name, variant.record.study_key_hash, None)
    result = collect(config, job, variant, study, outcomes, {})

    means = {t.number: t.objective_mean for t in result.trials if t.state == "COMPLETE"}
    assert len(set(means.values())) == len(means) == 4  # no ties
    assert winner not in (0, len(TRIALS) - 1)  # neither the first nor the last trial
    assert result.best is not None and result.best.number == winner, result.best
    assert result.best.objective_mean == pytest.approx(
        (max if direction == "maximize" else min)(v for v in means.values() if v is not None)
    )
    assert [t.state for t in result.trials] == [state for state, _ in TRIALS]
