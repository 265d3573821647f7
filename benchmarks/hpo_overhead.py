"""HPO overhead: the same small search three ways, in one command.

(a) ours: one Ray Train worker group per trial runs the k folds (ray_pipeline's HPO stage);
(b) the documented Ray pattern: one TorchTrainer per fold, k worker-group start-ups per trial;
(c) a plain in-process Optuna loop doing the same training (the compute-bound limit).

All three train the same tiny model on the same folds with the same settings, one trial at a
time. Prints wall time, summed training-step time, the overhead (wall - steps) and the ratios.

    python benchmarks/hpo_overhead.py [--trials 3] [--folds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "config" / "experiment" / "smoke.yaml"


def _config(outputs: Path, trials: int, folds: int) -> Any:
    from ray_pipeline.loading import load_config

    return load_config(
        SMOKE,
        [
            f"outputs_root={outputs}",
            f"hpo.num_samples={trials}",
            f"hpo.k_folds={folds}",
            "resources.max_concurrent_trials=1",
            "hpo.checkpoint.save_only_best=false",
            "tracking.enabled=false",  # the same for all three: no MLflow
        ],
    )


def ours(outputs: Path, trials: int, folds: int) -> tuple[float, float]:
    from ray_pipeline.hpo.stage import check_hpo, run_hpo

    config = _config(outputs, trials, folds)
    start = time.perf_counter()
    (result,) = run_hpo(config, check_hpo(config))
    wall = time.perf_counter() - start
    steps = sum(f.train_step_seconds for t in result.trials for f in t.folds)
    return wall, steps


def _one_fold(config: dict[str, Any]) -> None:
    """Per-worker loop of the per-fold pattern: the same fold code, one fold per trainer."""
    import ray.train

    from ray_pipeline.data.encode import encode
    from ray_pipeline.data.splits import load_splits
    from ray_pipeline.hpo.worker import FoldRun, TrialJob
    from ray_pipeline.models import load_tokenizer

    job = TrialJob.model_validate(config["job"])
    splits = load_splits(job.data)
    tokenizer = load_tokenizer(job.backbone)
    rows = encode(tokenizer, splits.train, splits.label2id, job.training.max_length)
    pad_id = int(tokenizer.pad_token_id or 0)
    fold = FoldRun(job, config["fold"], rows, splits)
    step_seconds = sum(fold.train_epoch(e, pad_id)[1] for e in range(job.training.epochs))
    if fold.rank != 0:
        ray.train.report({})
        return
    metrics = {"objective": fold.evaluate(pad_id)[job.metric], "step_seconds": step_seconds}
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

    from ray_pipeline.hpo.search_space import to_distributions
    from ray_pipeline.hpo.stage import _job

    config = _config(outputs, trials, folds)
    job = _job(config, config.model.backbones[0], "per_fold", "", None)

    def trial(params: dict[str, Any]) -> None:
        values, steps = [], 0.0
        training = job.training.model_copy(update=params)
        for fold in range(folds):
            trainer = TorchTrainer(
                _one_fold,
                train_loop_config={
                    "job": job.model_copy(update={"training": training}).model_dump(mode="json"),
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
    from ray_pipeline.training import batches, evaluate, make_optimizer, train_epoch

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
            model = build_model(backbone, config.data.task, splits.labels, seed=hpo.seed + fold)
            fit_rows = [rows[i] for i in fit]
            total = training.epochs * math.ceil(len(fit_rows) / training.batch_size)
            optimizer, scheduler = make_optimizer(model, training, total)
            for epoch in range(training.epochs):
                seed = hpo.seed * 10_007 + fold * 101 + epoch
                start = time.perf_counter()
                train_epoch(
                    model, batches(fit_rows, training.batch_size, pad, seed), optimizer, scheduler
                )
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
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args()
    from ray_pipeline.cluster import TRAIN_POLL_ENV, TRAIN_POLL_SECONDS

    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_SECONDS)  # the same for all three
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="hpo_overhead_") as tmp:
        for name, fn in (("ours", ours), ("per-fold", per_fold), ("plain optuna", plain_optuna)):
            print(f"running {name} ...", flush=True)
            rows[name] = fn(Path(tmp) / name.replace(" ", "_"), args.trials, args.folds)
    print(f"\n{args.trials} trials x {args.folds} folds, tiny BERT, one trial at a time, 2 CPUs")
    print(f"{'':<14}{'wall s':>9}{'steps s':>9}{'overhead s':>12}")
    for name, (wall, steps) in rows.items():
        print(f"{name:<14}{wall:>9.1f}{steps:>9.2f}{wall - steps:>12.1f}")
    (ow, os_), (pw, ps), (lw, _) = rows["ours"], rows["per-fold"], rows["plain optuna"]
    print(f"\nwall:      ours / per-fold = {ow / pw:.2f}   ours / plain optuna = {ow / lw:.1f}")
    print(f"overhead:  per-fold / ours = {(pw - ps) / (ow - os_):.2f}  (k = {args.folds})")
    starts = args.trials * args.folds
    print(
        f"worker-group start-ups: ours {args.trials}, per-fold {starts} (x{starts // args.trials})"
    )


if __name__ == "__main__":
    main()
