"""HPO overhead: the same small search four ways, in one command.

(a) ours: ray_pipeline's HPO stage as it runs by default (a one-worker trial trains inside its
    Ray Tune trial, in a reused process with cached data and weights);
(b) worker group: the same stage with ``resources.trial_backend=train`` (one Ray Train worker
    group per trial runs the k folds: the path multi-worker DDP trials take);
(c) per fold: the documented Ray pattern of one TorchTrainer per fold (k worker-group start-ups
    per trial, as ``ray.train.cross_validation`` does);
(d) plain optuna: an in-process Optuna loop doing the same training (the compute-bound limit).

All four train the same tiny model on the same folds with the same settings, one trial at a
time. Each way's search library is imported in the driver before its clock starts (optuna for
the plain loop, ray.tune for ours); everything else, the trial processes' start-up and imports
included, is on the clock. Prints wall time, summed training-step time, the overhead
(wall - steps) and the ratios; ``--json FILE`` writes them too.

    python benchmarks/hpo_overhead.py [--trials 8] [--folds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "config" / "experiment" / "smoke.yaml"


def _config(outputs: Path, trials: int, folds: int, *extra: str) -> Any:
    from ray_pipeline.loading import load_config

    return load_config(
        SMOKE,
        [
            f"outputs_root={outputs}",
            f"hpo.num_samples={trials}",
            f"hpo.k_folds={folds}",
            "resources.max_concurrent_trials=1",
            "hpo.checkpoint.save_only_best=false",
            "tracking.enabled=false",  # the same for all four: no MLflow
            *extra,
        ],
    )


def ours(outputs: Path, trials: int, folds: int) -> tuple[float, float]:
    return _stage(_config(outputs, trials, folds))


def worker_group(outputs: Path, trials: int, folds: int) -> tuple[float, float]:
    return _stage(_config(outputs, trials, folds, "resources.trial_backend=train"))


def _stage(config: Any) -> tuple[float, float]:
    import ray_pipeline.hpo.tuning  # noqa: F401  # the driver's search library, as plain's optuna
    from ray_pipeline.hpo.stage import check_hpo, run_hpo

    start = time.perf_counter()
    (result,) = run_hpo(config, check_hpo(config))
    wall = time.perf_counter() - start
    steps = sum(f.train_step_seconds for t in result.trials for f in t.folds)
    return wall, steps


def _one_fold(config: dict[str, Any]) -> None:
    """Per-worker loop of the per-fold pattern: the same fold code, one fold per trainer."""
    import ray.train

    from ray_pipeline.hpo.cache import prepared
    from ray_pipeline.hpo.fold_run import FoldRun
    from ray_pipeline.hpo.jobs import TrialJob
    from ray_pipeline.sessions import TrainSession

    job = TrialJob.model_validate(config["job"])
    session = TrainSession()
    inputs = prepared(job.study.data, job.study.backbone, job.training.max_length)
    fold = FoldRun(job, config["fold"], inputs, session)
    step_seconds = sum(fold.train_epoch(e)[1] for e in range(job.training.epochs))
    if session.rank != 0:
        ray.train.report({})
        return
    metrics = {"objective": fold.evaluate()[job.study.metric], "step_seconds": step_seconds}
    # Train V2 keeps only metrics reported with a checkpoint (ours checkpoints every fold too).
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "metrics.json").write_text(json.dumps(metrics))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def per_fold(outputs: Path, trials: int, folds: int) -> tuple[float, float]:
    import optuna
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.search.optuna import OptunaSearch

    from ray_pipeline.hpo.jobs import TrialJob
    from ray_pipeline.hpo.search_space import to_distributions
    from ray_pipeline.hpo.stage import _job

    config = _config(outputs, trials, folds)
    study = _job(config, config.model.backbones[0], "per_fold", "", None)

    def trial(params: dict[str, Any]) -> None:
        values, steps = [], 0.0
        job = TrialJob(study=study, trial=0, params=params, trial_key_hash="")
        for fold in range(folds):
            trainer = TorchTrainer(
                _one_fold,
                train_loop_config={
                    "job": job.model_dump(mode="json"),
                    "fold": fold,
                },
                scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                run_config=RunConfig(storage_path=str(outputs / "per_fold_train")),
            )
            metrics = trainer.fit().metrics or {}
            values.append(float(metrics["objective"]))
            steps += float(metrics["step_seconds"])
            tune.report({"objective": statistics.fmean(values), "step_seconds": steps})

    search = OptunaSearch(
        space=to_distributions(config.hpo.search_space),
        metric="objective",
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=config.hpo.seed),
    )
    tuner = tune.Tuner(
        tune.with_resources(trial, {"cpu": 0, "memory": 1 << 20}),
        tune_config=tune.TuneConfig(search_alg=search, num_samples=trials, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(outputs / "per_fold_tune"), verbose=0),
    )
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    results = [grid[i] for i in range(len(grid))]
    return wall, sum(float((r.metrics or {})["step_seconds"]) for r in results)


def plain_optuna(outputs: Path, trials: int, folds: int) -> tuple[float, float]:
    import optuna

    from ray_pipeline.data.encode import encode
    from ray_pipeline.data.splits import fold_indices, load_splits
    from ray_pipeline.hpo.search_space import to_distributions
    from ray_pipeline.models import build_model, load_tokenizer
    from ray_pipeline.training import (
        batches,
        evaluate,
        make_optimizer,
        optimizer_steps,
        train_epoch,
    )

    config = _config(outputs, trials, folds)
    backbone, hpo = config.model.backbones[0], config.hpo
    steps = 0.0

    def objective(params: dict[str, Any]) -> float:
        nonlocal steps
        training = hpo.training.model_copy(update=params)
        splits = load_splits(config.data)
        tokenizer = load_tokenizer(backbone)
        rows = encode(tokenizer, splits.train, splits.label2id, training.max_length)
        pad = int(tokenizer.pad_token_id or 0)
        values = []
        for fold in range(folds):
            fit, val = fold_indices(len(rows), splits.train.strata, folds, hpo.seed, fold)
            model = build_model(
                backbone, config.data.task, splits.labels, hpo.seed + fold, training
            )
            fit_rows = [rows[i] for i in fit]
            per_epoch = optimizer_steps(
                len(fit_rows), training.batch_size, training.gradient_accumulation_steps
            )
            total = training.epochs * per_epoch
            optimizer, scheduler = make_optimizer(model, training, total)
            for epoch in range(training.epochs):
                seed = hpo.seed * 10_007 + fold * 101 + epoch
                start = time.perf_counter()
                data = batches(fit_rows, training.batch_size, pad, seed)
                train_epoch(model, data, optimizer, scheduler, None, training)
                steps += time.perf_counter() - start
            metrics = evaluate(
                model, [rows[i] for i in val], splits.labels, config.data.task, 32, pad
            )
            values.append(metrics[hpo.objective.metric])
        return statistics.fmean(values)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=hpo.seed)
    )
    start = time.perf_counter()
    for _ in range(trials):  # ask-and-tell: the same distributions the Tune searcher uses
        trial = study.ask(to_distributions(hpo.search_space))
        study.tell(trial, objective(trial.params))
    return time.perf_counter() - start, steps


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    from ray_pipeline.cluster import TRAIN_POLL_ENV, TRAIN_POLL_SECONDS

    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_SECONDS)  # the same for all four
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ways = {"ours": ours, "worker group": worker_group, "per fold": per_fold}
    rows = {}
    with tempfile.TemporaryDirectory(prefix="hpo_overhead_") as tmp:
        for name, fn in {**ways, "plain optuna": plain_optuna}.items():
            print(f"running {name} ...", flush=True)
            rows[name] = fn(Path(tmp) / name.replace(" ", "_"), args.trials, args.folds)
    print(f"\n{args.trials} trials x {args.folds} folds, tiny BERT, one trial at a time, 2 CPUs")
    print(f"{'':<14}{'wall s':>9}{'steps s':>9}{'overhead s':>12}{'/ plain':>9}")
    plain = rows["plain optuna"][0]
    for name, (wall, steps) in rows.items():
        print(f"{name:<14}{wall:>9.1f}{steps:>9.2f}{wall - steps:>12.1f}{wall / plain:>9.2f}")
    figures = {
        "trials": args.trials,
        "folds": args.folds,
        "plain_s": round(plain, 2),
        "ours_s": round(rows["ours"][0], 2),
        "worker_group_s": round(rows["worker group"][0], 2),
        "per_fold_s": round(rows["per fold"][0], 2),
        "ours_over_plain": round(rows["ours"][0] / plain, 3),
        "overhead_per_trial_s": round((rows["ours"][0] - plain) / args.trials, 3),
    }
    print(
        f"\nours / plain optuna = {figures['ours_over_plain']:.2f}; overhead per trial "
        f"{figures['overhead_per_trial_s']:.2f} s; worker group / ours = "
        f"{figures['worker_group_s'] / figures['ours_s']:.2f}; per fold / ours = "
        f"{figures['per_fold_s'] / figures['ours_s']:.2f}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"written to {args.json}")


if __name__ == "__main__":
    main()
