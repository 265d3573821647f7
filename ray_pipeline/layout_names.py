"""The fixed names of the outputs tree: file and directory names inside a checkpoint, Ray
Tune's names inside a round, the study file's default. ``paths.py`` describes the tree and
builds every path; the names live here, with no project import, so that the schema can take a
default from them without importing ``paths.py`` (which reads the schema). Together the two
modules are the layout's one owner (``tests/test_layout.py``)."""

from __future__ import annotations

DEFAULT_STUDY_PATH = "{study_name}/study.db"
"""``hpo.checkpoint.storage_path``'s default, relative to the backbone's HPO directory."""

# Inside the outputs root.
STORAGE_NAMESPACE = ".storage_namespace.json"
"""The outputs root's namespace under ``storage.uri`` (``storage.py``), written once."""

# Inside a checkpoint directory.
CHECKPOINT_MODEL = "model"
TRAINING_STATE = "training_state.pt"
BEST_EPOCH_MODEL = "best_epoch_model.pt"
FOLD_STATE = "fold_state.json"
FINAL_STATE = "final_state.json"

# Inside a variant directory.
VARIANT_RECORD = "variant.json"
LEASE = "lease.json"
MODEL_CARD = "README.md"
"""The model card inside an exported ``model/`` (the Hugging Face convention)."""

# Ray Tune's own names inside a round directory (``tune/round_<r>/``).
TUNE_SNAPSHOT = ("experiment_state-", ".json")
"""Tune's experiment snapshots: ``experiment_state-<time>.json``."""
ROUND_PREFIX = "round_"
"""A variant's Tune rounds: ``tune/round_<r>``, one per run that added trials."""
FINAL_EPOCH_PREFIX = "epoch_"
"""Final training's epoch checkpoints: ``checkpoints/epoch_<epochs done, 4 digits>``."""
TUNE_CHECKPOINT_PREFIX = "checkpoint_"
"""A Tune trial's checkpoints: ``trial_<n>/checkpoint_<index, 6 digits>``."""
