"""Hyperparameter search: Ray Tune + Optuna over k-fold trials, each trained in its Tune trial
process (one worker) or on a Ray Train worker group (DDP).

Modules, bottom up: ``jobs`` (what a trial is asked to do), ``results`` (a fold's, a trial's
and a variant's records), ``trial_report`` (what a trial reports to Tune), ``cache``
(per-process data and weights), ``search_space`` and ``study`` (Optuna), ``fold_run`` (one
fold on one worker, and the epoch that scores it), ``worker`` (the fold loop, in a Tune trial
or on Train workers), ``trial_runs`` (a trial's job and MLflow run), ``keep`` (what a finished
variant keeps), ``starts`` (a new variant's first trials), ``progress`` and ``schedulers`` (a
Tune callback, Tune's schedulers), ``search`` (the Tune searcher over the Optuna study),
``tune_state`` (a round's snapshot), ``tuning`` (the trial and the Tuner), ``collect``
(``hpo.json`` from the study and the rounds' outcomes), ``stage`` (run.mode, rounds,
``hpo.json``). Ray Tune is imported in hpo/ only (and in ``ray_pipeline.internals``, which
guards what it reads of Tune's internals).
"""
