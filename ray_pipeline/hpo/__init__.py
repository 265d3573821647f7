"""Hyperparameter search: Ray Tune + Optuna over k-fold trials trained on Ray Train workers.

Layers, bottom up: ``worker`` (the per-worker fold loop, Ray Train only), ``tuning`` (the
trial driver and the Tuner, the one module that imports ray.tune), ``study`` (the Optuna
study in the variant), ``stage`` (run.mode, rounds, results).
"""
