"""Study and trial hashes: stable, canonical, and sensitive to exactly what defines a study."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_pipeline.identity import (
    changed_keys,
    stable_hash,
    study_key,
    trial_key_hash,
)
from ray_pipeline.loading import load_config
from tests.conftest import MakeExp

_HASH_SCRIPT = """
import sys
from ray_pipeline.identity import stable_hash, study_key
from ray_pipeline.loading import load_config
cfg = load_config(sys.argv[1])
print(stable_hash(study_key(cfg, cfg.model.backbones[0])))
"""


def test_canonical_hash_ignores_key_order() -> None:
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 1.5})
    assert len(stable_hash({})) == 64


@pytest.mark.slow
def test_study_hash_is_stable_across_processes(smoke_experiment: MakeExp) -> None:
    path = smoke_experiment()
    cfg = load_config(path)
    here = stable_hash(study_key(cfg, cfg.model.backbones[0]))
    seen = set()
    for seed in ("0", "123"):  # different str hashing per process must not matter
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _HASH_SCRIPT, str(path)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        seen.add(out.stdout.strip())
    assert seen == {here}


def test_study_key_covers_what_defines_a_study(smoke_experiment: MakeExp) -> None:
    path = smoke_experiment()

    def key(*overrides: str) -> str:
        cfg = load_config(path, list(overrides))
        return stable_hash(study_key(cfg, cfg.model.backbones[0]))

    base = key()
    # Growing the study, scheduling it differently or changing modes keeps its identity.
    assert key("hpo.num_samples=50") == base
    assert key("hpo.scheduler.type=asha") == base
    assert key("hpo.run.mode=force_new") == base
    assert key("outputs_root=/somewhere/else") == base
    # What defines the study changes it.
    assert key("hpo.search_space.learning_rate.high=0.5") != base
    assert key("hpo.k_folds=3") != base
    assert key("hpo.seed=1") != base
    assert key("hpo.training.max_length=128") != base
    assert key("hpo.objective.metric=accuracy") != base
    assert key("data.max_train_examples=10") != base


def test_data_files_are_identified_by_content_not_location(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    cfg = load_config(smoke_experiment())
    src = cfg.data.train_file
    assert src is not None
    copy = tmp_path / "copy" / src.name
    copy.parent.mkdir()
    copy.write_bytes(src.read_bytes())
    moved = load_config(smoke_experiment(), [f"data.train_file={copy}"])
    backbone = cfg.model.backbones[0]
    assert study_key(cfg, backbone) == study_key(moved, backbone)
    copy.write_text("review,score\nchanged,great\n")
    changed = load_config(smoke_experiment(), [f"data.train_file={copy}"])
    assert study_key(cfg, backbone) != study_key(changed, backbone)


def test_trial_hash_depends_on_study_and_params() -> None:
    a = trial_key_hash("s1", {"learning_rate": 1e-4})
    assert a == trial_key_hash("s1", {"learning_rate": 1e-4})
    assert a != trial_key_hash("s2", {"learning_rate": 1e-4})
    assert a != trial_key_hash("s1", {"learning_rate": 2e-4})


def test_changed_keys_names_dotted_paths() -> None:
    old = {"hpo": {"search_space": {"lr": {"high": 0.1}}, "seed": 1}, "x": 1}
    new = {"hpo": {"search_space": {"lr": {"high": 0.5}}, "seed": 1}, "y": 2}
    assert changed_keys(old, new) == [
        "hpo.search_space.lr.high (0.1 -> 0.5)",
        "x (removed, was 1)",
        "y (added: 2)",
    ]


def test_settings_added_later_leave_older_keys_unchanged_at_their_defaults(
    smoke_experiment: MakeExp,
) -> None:
    """A variant keyed before lr_schedule, label smoothing, dropout, accumulation and clipping
    existed (its stored key has none of them) is still the same study while they keep their
    defaults, and a different one once one is set; the same for a condition and sampler options."""
    path = smoke_experiment()
    config = load_config(path)
    key = study_key(config, config.model.backbones[0])
    added = {"lr_schedule", "label_smoothing", "dropout", "classifier_dropout"}
    added |= {"gradient_accumulation_steps", "max_grad_norm"}
    assert not added & set(key["hpo"]["training"])
    assert "when" not in key["hpo"]["search_space"]["learning_rate"]
    assert key["hpo"]["sampler"] == "tpe"
    smoothed = load_config(path, ["hpo.training.label_smoothing=0.1"])
    changed = changed_keys(key, study_key(smoothed, smoothed.model.backbones[0]))
    assert changed == ["hpo.training.label_smoothing (added: 0.1)"]
