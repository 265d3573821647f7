"""Study and trial hashes: stable, canonical, and sensitive to exactly what defines a study."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_pipeline.identity import (
    changed_keys,
    final_key,
    same_study,
    sampler_identity,
    stable_hash,
    study_key,
    training_identity,
    trial_key_hash,
)
from ray_pipeline.loading import load_config
from ray_pipeline.schema import PipelineConfig, SamplerConfig
from ray_pipeline.schema.training import DROPOUT_MASKS_ENV
from tests.conftest import SMOKE, MakeExp


@pytest.fixture(autouse=True)
def schema_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys of configs as they are written, without this machine's choice of CPU dropout masks
    (RAY_PIPELINE_CPU_DROPOUT_MASKS, which the suite may run with: tests/conftest.py)."""
    monkeypatch.delenv(DROPOUT_MASKS_ENV, raising=False)


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
    added |= {"gradient_accumulation_steps", "max_grad_norm", "cpu_dropout_masks"}
    assert not added & set(key["hpo"]["training"])
    assert "when" not in key["hpo"]["search_space"]["learning_rate"]
    assert key["hpo"]["sampler"] == "tpe"
    smoothed = load_config(path, ["hpo.training.label_smoothing=0.1"])
    changed = changed_keys(key, study_key(smoothed, smoothed.model.backbones[0]))
    assert changed == ["hpo.training.label_smoothing (added: 0.1)"]


def test_numpy_dropout_masks_are_keyed_and_torchs_are_not(smoke_experiment: MakeExp) -> None:
    """The opt-in ``cpu_dropout_masks: numpy`` changes the numbers, so it changes the study and
    final keys; its default leaves every key as it was before the setting existed."""
    path = smoke_experiment()
    config, numpy = load_config(path), load_config(path, ["hpo.training.cpu_dropout_masks=numpy"])
    backbone = config.model.backbones[0]
    assert "cpu_dropout_masks" not in training_identity(config.hpo.training)
    changed = changed_keys(study_key(config, backbone), study_key(numpy, backbone))
    assert changed == ['hpo.training.cpu_dropout_masks (added: "numpy")']
    finals = [final_key(c, "0" * 64, c.hpo.training) for c in (config, numpy)]
    assert finals[0] != finals[1]


SMOKE_KEYS = {
    "": "3f3c285fa93a28ea",
    "hpo.sampler=random": "ecfcb0ea2de13ffd",
    "hpo.sampler=cmaes": "16c17b29238bf2f7",
    "hpo.sampler=gp": "9c1dd7f4acdd4be4",
    "hpo.sampler=nsga2": "cfc3948913fcfc5f",
    "hpo.sampler={type: tpe, multivariate: true}": "3a2af7d21e309fb9",
    "hpo.sampler={type: nsga2, population_size: 20}": "65e7bbc1ae28628e",
}
"""Study key hashes (their first 16 hex digits) of the shipped smoke experiment, recorded before
the schema resolved the sampler's options, the benchmark's mode, selection's objective, the
MLflow experiment's name and the evaluation batch size. A change orphans every variant keyed
before: reuse_if_exists would refuse them."""


@pytest.mark.parametrize("override", list(SMOKE_KEYS))
def test_resolved_defaults_keep_the_keys_of_configs_that_never_set_them(override: str) -> None:
    config = load_config(SMOKE, [override] if override else [])
    backbone = config.model.backbones[0]
    assert stable_hash(study_key(config, backbone))[:16] == SMOKE_KEYS[override]
    # config.resolved.yaml read back (every default now written out) is the same study.
    again = PipelineConfig.model_validate(config.model_dump(mode="json"))
    assert again == config
    assert study_key(again, backbone) == study_key(config, backbone)


def test_resolved_defaults_keep_the_final_key() -> None:
    config = load_config(SMOKE)
    key = final_key(config, "0" * 64, config.hpo.training)
    assert stable_hash(key)[:16] == "5e88bfb02fcb9384"
    assert config.hpo.training.eval_batch_size == 32
    assert "eval_batch_size" not in training_identity(config.hpo.training)
    larger = config.hpo.training.model_copy(update={"eval_batch_size": 64})
    assert training_identity(larger)["eval_batch_size"] == 64


def test_sampler_options_are_keyed_as_before_they_were_resolved() -> None:
    """At the value the schema resolves a null to, an option is keyed as null: the name alone
    while every option is at its default, else the settings with that option null."""
    for kind in ("tpe", "gp", "cmaes", "nsga2", "random"):
        assert sampler_identity(SamplerConfig(type=kind)) == kind
    multivariate = sampler_identity(SamplerConfig(type="tpe", multivariate=True))
    assert multivariate["n_startup_trials"] is None and multivariate["multivariate"] is True
    assert sampler_identity(SamplerConfig(type="gp", n_startup_trials=5))["n_startup_trials"] == 5


@pytest.mark.parametrize(
    "written",
    [
        {"type": "tpe", "n_startup_trials": 10},
        {"type": "tpe", "multivariate": True, "n_startup_trials": 10},
        {"type": "gp", "n_startup_trials": 10},
        {"type": "nsga2", "population_size": 50},
    ],
)
def test_a_variant_keyed_with_a_sampler_default_written_out_is_still_the_same_study(
    smoke_experiment: MakeExp, written: dict[str, object]
) -> None:
    """Before the schema resolved sampler defaults, an option written out at Optuna's default
    was keyed with it: such a variant is still reused, not refused as another study."""
    config = load_config(smoke_experiment(), [f"hpo.sampler={written}"])
    backbone = config.model.backbones[0]
    key = study_key(config, backbone)
    options = {"n_startup_trials": None, "multivariate": False, "group": False}
    older = {**key, "hpo": {**key["hpo"], "sampler": {**options, "population_size": None}}}
    older["hpo"]["sampler"].update(written)  # the full settings, as the older version keyed
    assert stable_hash(older) != stable_hash(key)
    assert same_study(older, key)
    other = {**older, "hpo": {**older["hpo"], "seed": 7}}
    assert not same_study(other, key)  # a real change is still a change
