"""Hyperparameter search: Ray Tune + Optuna over k-fold trials, each trained in its Tune trial
process (one worker) or on a Ray Train worker group (DDP).

Layers, bottom up: ``jobs`` (what a trial is asked to do), ``cache`` (per-process data and
weights), ``worker`` (the fold loop, in a Tune trial or on Train workers), ``trial_runs`` (a
trial's job and MLflow run), ``tuning`` (the trial, the Tuner and the Optuna bridge, the one
module that imports ray.tune), ``search_space`` and ``study`` (Optuna), ``results`` (the
records), ``stage`` (run.mode, rounds, ``hpo.json``).
"""
