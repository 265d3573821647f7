"""The training settings of a full search space: learning-rate schedule, label smoothing,
dropout, gradient accumulation and gradient clipping, in the config, the search space, the
training loop and both places a model is trained (HPO folds and the refit)."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ray_pipeline.data.encode import IGNORE_INDEX, collate
from ray_pipeline.errors import ConfigError
from ray_pipeline.final.results import FinalJob
from ray_pipeline.final.worker import epoch_checkpoints, run_epochs
from ray_pipeline.hpo.cache import fresh_model, prepared
from ray_pipeline.hpo.fold_run import FoldRun
from ray_pipeline.hpo.jobs import StudyJob, TrialJob
from ray_pipeline.identity import study_key
from ray_pipeline.layout_names import CHECKPOINT_MODEL, TRAINING_STATE
from ray_pipeline.loading import load_config
from ray_pipeline.models import build_model, check_dropout, dropout_overrides
from ray_pipeline.precision import Amp
from ray_pipeline.schema import BackboneConfig, CategoricalParam, Task, TrainingParams
from ray_pipeline.schema.training import LrSchedule
from ray_pipeline.training import (
    batches,
    make_optimizer,
    optimizer_steps,
    train_epoch,
    training_loss,
)
from tests.conftest import CONFIG_DIR, MakeExp

CPU = torch.device("cpu")
TINY_BERT = BackboneConfig(name="tiny-bert", path=CONFIG_DIR / "model" / "tiny_bert")
"""The shipped pre-trained 2-layer BERT (hidden_dropout_prob 0.1, classifier_dropout null)."""
NO_DROPOUT = TrainingParams(dropout=0.0, classifier_dropout=0.0)


def _rows(count: int, *, tokens: bool = False) -> list[dict[str, Any]]:
    """``count`` rows of 4..10 tokens; per-token labels (specials and every third token
    ignored) with ``tokens``, else one label per row."""
    rows = []
    for i in range(count):
        n = 4 + (i * 5) % 7
        ids = [2, *(10 + (i + j) % 40 for j in range(n - 2)), 3]
        labels: Any = i % 2
        if tokens:
            labels = [
                IGNORE_INDEX if j in (0, n - 1) or j % 3 == 2 else (i + j) % 3 for j in range(n)
            ]
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * n,
                "token_type_ids": [0] * n,
                "labels": labels,
            }
        )
    return rows


def _model(params: TrainingParams = NO_DROPOUT, task: Task = "sequence_classification") -> Any:
    return build_model(TINY_BERT, task, ("a", "b", "c"), seed=0, training=params)


def _flat_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _record_steps(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list[torch.Tensor]:
    """The gradients ``optimizer`` sees at each of its steps, from now on."""
    seen: list[torch.Tensor] = []
    optimizer.register_step_pre_hook(lambda *_: seen.append(_flat_grads(model).clone()))
    return seen


# ----------------------------------------------------------------------------- the config


def test_defaults_train_as_before() -> None:
    p = TrainingParams()
    assert (p.lr_schedule, p.label_smoothing, p.gradient_accumulation_steps) == ("linear", 0.0, 1)
    assert p.dropout is None and p.classifier_dropout is None and p.max_grad_norm is None


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("hpo.training.lr_schedule=step", "lr_schedule"),
        ("hpo.training.label_smoothing=1.0", "label_smoothing"),
        ("hpo.training.dropout=1.0", "dropout"),
        ("hpo.training.classifier_dropout=-0.1", "classifier_dropout"),
        ("hpo.training.gradient_accumulation_steps=0", "gradient_accumulation_steps"),
        ("hpo.training.max_grad_norm=0", "max_grad_norm"),
    ],
)
def test_bad_values_name_the_key(smoke_experiment: MakeExp, override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"hpo\.training\.{key}"):
        load_config(smoke_experiment(), [override])


def test_every_new_setting_can_be_searched(smoke_experiment: MakeExp) -> None:
    space = [
        "hpo.search_space.lr_schedule={type: categorical, choices: [linear, cosine]}",
        "hpo.search_space.dropout={type: float, low: 0.0, high: 0.3}",
        "hpo.search_space.classifier_dropout={type: categorical, choices: ['0.1', 0.2]}",
        "hpo.search_space.max_grad_norm={type: categorical, choices: ['1e-1', 1]}",
        "hpo.search_space.label_smoothing={type: float, low: 0.0, high: 0.2}",
        "hpo.search_space.gradient_accumulation_steps={type: int, low: 1, high: 4}",
    ]
    searched = load_config(smoke_experiment(), space).hpo.search_space
    assert set(searched) == {
        "learning_rate",
        "weight_decay",
        *(entry.split("=")[0].removeprefix("hpo.search_space.") for entry in space),
    }
    choices = {k: v.choices for k, v in searched.items() if isinstance(v, CategoricalParam)}
    # Choices arrive as the field's type (YAML reads 1e-1 as a string).
    assert choices == {
        "lr_schedule": ["linear", "cosine"],
        "classifier_dropout": [0.1, 0.2],
        "max_grad_norm": [0.1, 1.0],
    }
    trial = TrainingParams().with_params({"lr_schedule": "cosine", "dropout": 0.2})
    assert (trial.lr_schedule, trial.dropout) == ("cosine", 0.2)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("dropout={type: float, low: 0.0, high: 1.0}", r"dropout: 1\.0 is not a valid value"),
        ("max_grad_norm={type: float, low: 0.0, high: 1.0}", r"max_grad_norm: 0\.0 is not a valid"),
        ("lr_schedule={type: categorical, choices: [linear, step]}", "lr_schedule: 'step'"),
        ("lr_schedule={type: float, low: 0.0, high: 1.0}", r"lr_schedule: 0\.0 is not a valid"),
        ("gradient_accumulation_steps={type: float, low: 1, high: 4}", "whole numbers"),
        ("label_smoothing={type: categorical, choices: [0.1, 1]}", "label_smoothing: 1 is not"),
    ],
)
def test_search_entries_must_fit_the_field(
    smoke_experiment: MakeExp, entry: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(smoke_experiment(), [f"hpo.search_space.{entry}"])


def test_every_new_setting_is_part_of_the_study_key(smoke_experiment: MakeExp) -> None:
    exp = smoke_experiment()
    overrides = [
        [],
        ["hpo.training.lr_schedule=cosine"],
        ["hpo.training.label_smoothing=0.1"],
        ["hpo.training.dropout=0.2"],
        ["hpo.training.classifier_dropout=0.2"],
        ["hpo.training.gradient_accumulation_steps=2"],
        ["hpo.training.max_grad_norm=1.0"],
    ]
    keys = set()
    for changed in overrides:
        config = load_config(exp, changed)
        keys.add(json.dumps(study_key(config, config.model.backbones[0]), sort_keys=True))
    assert len(keys) == len(overrides)


# --------------------------------------------------------------------------- the schedule


def _rates(schedule: LrSchedule) -> list[float]:
    params = TrainingParams(learning_rate=1.0, warmup_ratio=0.2, lr_schedule=schedule)
    optimizer, scheduler = make_optimizer(_model(), params, total_steps=10)
    rates = []
    for _ in range(10):
        rates.append(float(scheduler.get_last_lr()[0]))
        optimizer.step()
        scheduler.step()
    return rates


def test_each_schedule_warms_up_then_follows_its_curve() -> None:
    warmup = [0.0, 0.5]
    decay = [i / 8 for i in range(8)]  # progress through the 8 steps after the warm-up
    assert _rates("linear") == pytest.approx([*warmup, *(1 - t for t in decay)])
    cosine = [0.5 * (1 + math.cos(math.pi * t)) for t in decay]
    assert _rates("cosine") == pytest.approx([*warmup, *cosine])
    assert _rates("constant_with_warmup") == pytest.approx([*warmup, *[1.0] * 8])


# ------------------------------------------------------------------------- label smoothing


@pytest.mark.parametrize("task", ["sequence_classification", "token_classification"])
def test_without_smoothing_the_loss_is_the_models_own(task: Task) -> None:
    model = _model(task=task).eval()
    batch = collate(_rows(6, tokens=task == "token_classification"), 0)
    with torch.no_grad():
        own = model(**batch).loss
        ours = training_loss(model, batch)
        smoothed = training_loss(model, batch, label_smoothing=0.2)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert float(ours) == pytest.approx(float(own), rel=1e-6)
    # Smoothing: (1 - s) x cross-entropy + s x the mean over classes of -log p, counted over
    # the labelled positions only.
    kept = batch["labels"].flatten() != IGNORE_INDEX
    log_p = logits.flatten(0, -2)[kept].log_softmax(-1)
    gold = -log_p.gather(1, batch["labels"].flatten()[kept][:, None]).mean()
    expected = 0.8 * gold + 0.2 * -log_p.mean()
    assert float(smoothed) == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(smoothed) - float(own)) > 1e-3


def test_training_uses_the_smoothed_loss() -> None:
    rows = _rows(4)
    batch = collate(rows, 0)
    for smoothing in (0.0, 0.3):
        model = _model()
        with torch.no_grad():
            expected = float(training_loss(model, batch, smoothing))
        optimizer, scheduler = make_optimizer(model, NO_DROPOUT, 1)
        params = NO_DROPOUT.model_copy(update={"label_smoothing": smoothing})
        reported = train_epoch(model, batches(rows, 4, 0), optimizer, scheduler, None, params)
        assert reported == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------- gradient accumulation


def _train(batch_size: int, accumulation: int, rows: list[dict[str, Any]]) -> Any:
    """One epoch over ``rows`` in order: the gradients of every optimizer step and the model."""
    model = _model()
    params = NO_DROPOUT.model_copy(
        update={"learning_rate": 1e-3, "gradient_accumulation_steps": accumulation}
    )
    steps = optimizer_steps(len(rows), batch_size, accumulation)
    optimizer, scheduler = make_optimizer(model, params, steps)
    seen = _record_steps(optimizer, model)
    train_epoch(model, batches(rows, batch_size, 0), optimizer, scheduler, None, params)
    return seen, scheduler.last_epoch, model


def test_accumulating_batches_trains_like_one_large_batch() -> None:
    rows = _rows(20)  # batches of 2 in groups of 4: 4 + 4 + 2 batches (the last group short)
    assert optimizer_steps(20, 2, 4) == optimizer_steps(20, 8, 1) == 3
    large, large_steps, large_model = _train(8, 1, rows)
    small, small_steps, small_model = _train(2, 4, rows)
    assert len(small) == len(large) == 3 and small_steps == large_steps == 3
    for accumulated, whole in zip(small, large, strict=True):
        torch.testing.assert_close(accumulated, whole, rtol=1e-4, atol=1e-7)
    # The weights, to a tenth of one step (1e-3): AdamW divides by the gradients' magnitude,
    # which magnifies the rounding differences of tiny gradients.
    for a, b in zip(small_model.parameters(), large_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_ddp_synchronises_only_the_last_batch_of_a_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        ddp = DistributedDataParallel(_model())
        unsynced: list[bool] = []
        original = ddp.no_sync

        @contextlib.contextmanager
        def no_sync() -> Iterator[None]:
            with original():
                unsynced.append(True)
                yield

        monkeypatch.setattr(ddp, "no_sync", no_sync)
        params = NO_DROPOUT.model_copy(update={"gradient_accumulation_steps": 3})
        optimizer, scheduler = make_optimizer(ddp, params, 2)
        train_epoch(ddp, batches(_rows(10), 2, 0), optimizer, scheduler, None, params)
        # 5 batches in groups of 3 + 2: the first 2 and the next 1 skip the all-reduce.
        assert len(unsynced) == 3 and scheduler.last_epoch == 2
    finally:
        dist.destroy_process_group()


# -------------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_clipping_bounds_the_true_gradient_norm(precision: str) -> None:
    rows = _rows(8)
    norms = {}
    for clip in (None, 0.01):
        model = _model()
        params = NO_DROPOUT.model_copy(update={"max_grad_norm": clip, "learning_rate": 1e-4})
        optimizer, scheduler = make_optimizer(model, params, 4)
        seen = _record_steps(optimizer, model)
        amp = Amp(precision, CPU)  # type: ignore[arg-type]
        train_epoch(model, batches(rows, 2, 0), optimizer, scheduler, amp, params)
        finite = [float(g.norm()) for g in seen if bool(g.isfinite().all())]
        assert finite, "no step had finite gradients"
        norms[clip] = finite
    assert all(n == pytest.approx(0.01, rel=1e-3) for n in norms[0.01])
    if precision == "fp32":  # (fp16 without clipping hands the optimizer scaled gradients)
        assert min(norms[None]) > 0.05


# --------------------------------------------------------------------------------- dropout


def test_dropout_settings_land_in_the_model_and_its_saved_config(tmp_path: Path) -> None:
    own = _model(TrainingParams())
    assert own.config.hidden_dropout_prob == 0.1 and own.config.classifier_dropout is None
    assert own.dropout.p == 0.1  # BERT's head falls back to the backbone's dropout
    model = _model(TrainingParams(dropout=0.25, classifier_dropout=0.4))
    assert model.config.hidden_dropout_prob == model.config.attention_probs_dropout_prob == 0.25
    assert model.bert.embeddings.dropout.p == 0.25 and model.dropout.p == 0.4
    for a, b in zip(own.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)  # the same seeded weights
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["hidden_dropout_prob"] == 0.25 and saved["classifier_dropout"] == 0.4


def test_each_architecture_gets_its_own_dropout_attributes() -> None:
    from transformers import AutoConfig, PretrainedConfig

    assert dropout_overrides(AutoConfig.for_model("bert"), 0.2, 0.3) == {
        "hidden_dropout_prob": 0.2,
        "attention_probs_dropout_prob": 0.2,
        "classifier_dropout": 0.3,
    }
    assert dropout_overrides(AutoConfig.for_model("distilbert"), 0.2, 0.3) == {
        "dropout": 0.2,
        "attention_dropout": 0.2,
        "seq_classif_dropout": 0.3,
    }
    assert dropout_overrides(AutoConfig.for_model("deberta-v2"), None, 0.3) == {"cls_dropout": 0.3}
    assert dropout_overrides(PretrainedConfig(), None, None) == {}
    with pytest.raises(ConfigError, match=r"hpo\.training\.dropout: .*leave dropout null"):
        dropout_overrides(PretrainedConfig(), 0.2, None)
    with pytest.raises(ConfigError, match=r"hpo\.training\.classifier_dropout"):
        dropout_overrides(AutoConfig.for_model("mpnet"), None, 0.3)  # its head has none


def test_dropout_is_checked_before_anything_trains(smoke_experiment: MakeExp) -> None:
    check_dropout(load_config(smoke_experiment(), ["hpo.training.dropout=0.2"]))
    mpnet = {"backbones": [{"name": "m", "random": {"model_type": "mpnet", "config": {}}}]}
    exp = smoke_experiment(model=mpnet)
    check_dropout(load_config(exp, ["hpo.training.dropout=0.2"]))  # MPNet has hidden dropout
    with pytest.raises(ConfigError, match=r"hpo\.training\.classifier_dropout"):
        check_dropout(load_config(exp, ["hpo.training.classifier_dropout=0.2"]))
    searched = "hpo.search_space.classifier_dropout={type: float, low: 0.0, high: 0.2}"
    with pytest.raises(ConfigError, match=r"hpo\.search_space\.classifier_dropout"):
        check_dropout(load_config(exp, [searched]))


# ------------------------------------------------------------- HPO folds and the refit


class _OneProcess:
    """A session of one CPU process (what a Tune trial or final training's task is)."""

    rank, world_size, device, threads = 0, 1, CPU, 1

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def checkpoint(self) -> Any | None:
        return None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        return None

    def fit_threads(self) -> int:
        return self.threads


def test_a_fold_builds_its_model_and_schedule_from_the_settings(smoke_experiment: MakeExp) -> None:
    config = load_config(smoke_experiment(), ["data.max_train_examples=24"])
    backbone = config.model.backbones[0]
    training = TrainingParams(
        epochs=1, batch_size=4, gradient_accumulation_steps=2, dropout=0.05, max_length=16
    )
    study = StudyJob(
        variant="hpo_t",
        study_key_hash="k",
        data=config.data,
        backbone=backbone,
        task=config.data.task,
        training=training,
        k_folds=2,
        seed=0,
        metric="macro_f1",
        direction="maximize",
        report_every_epoch=False,
        every_epoch=None,
    )
    job = TrialJob(study=study, trial=0, params={"classifier_dropout": 0.3}, trial_key_hash="t")
    inputs = prepared(config.data, backbone, training.max_length)
    fold = FoldRun(job, 0, inputs, _OneProcess())
    assert fold.model.config.hidden_dropout_prob == 0.05
    assert fold.model.config.classifier_dropout == 0.3  # the trial's value
    fold.train_epoch(0)
    # 12 rows in batches of 4, 2 per step: 2 steps, and the linear schedule reached 0 there.
    assert fold.scheduler.last_epoch == 2 and fold.scheduler.get_last_lr()[0] == 0.0
    other = fresh_model(backbone, config.data.task, inputs.splits.labels, 0, TrainingParams())
    assert other.config.hidden_dropout_prob == 0.1  # not the cached model of other settings


class _Rank(_OneProcess):
    """Rank ``rank`` of a ``world_size``-worker group, as far as the fold loop asks (the DDP
    wrapping itself is Ray Train's: tests/test_ddp.py)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size


def test_each_rank_of_a_ddp_trial_fits_its_own_shard_of_the_fold(
    smoke_experiment: MakeExp,
) -> None:
    config = load_config(smoke_experiment(), ["data.max_train_examples=24"])
    backbone = config.model.backbones[0]
    study = StudyJob(
        variant="hpo_t",
        study_key_hash="k",
        data=config.data,
        backbone=backbone,
        task=config.data.task,
        training=TrainingParams(epochs=1, batch_size=4, max_length=16),
        k_folds=2,
        seed=0,
        metric="macro_f1",
        direction="maximize",
        report_every_epoch=False,
        every_epoch=None,
    )
    job = TrialJob(study=study, trial=0, params={}, trial_key_hash="t")
    inputs = prepared(config.data, backbone, 16)
    alone = FoldRun(job, 1, inputs, _OneProcess())
    ranks = [FoldRun(job, 1, inputs, _Rank(rank, 2)) for rank in range(2)]
    # The rows are the cached data set's own objects: their identities tell them apart.
    shards = [{id(row) for row in r.fit_rows} for r in ranks]
    assert shards[0] and shards[1] and not shards[0] & shards[1]  # no row trained twice
    assert shards[0] | shards[1] == {id(row) for row in alone.fit_rows}
    assert all(r.n_fit == alone.n_fit == 12 for r in ranks)  # the fold's rows, all of them
    assert all(r.val_rows == alone.val_rows for r in ranks)  # rank 0 scores them all


def test_the_refit_counts_optimizer_steps_and_exports_its_dropout(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    overrides = ["data.max_train_examples=24", "data.max_test_examples=4"]
    config = load_config(smoke_experiment(), overrides)
    training = TrainingParams(
        epochs=1,
        batch_size=4,
        gradient_accumulation_steps=4,
        dropout=0.05,
        classifier_dropout=0.2,
        max_grad_norm=1.0,
        max_length=16,
    )
    job = FinalJob(
        variant="final_t",
        checkpoints=str(tmp_path / "checkpoints"),
        keep_checkpoints=1,
        batch_size_per_worker=4,
        backbone=config.model.backbones[0],
        data=config.data,
        task=config.data.task,
        training=training,
        seed=0,
        attempt="now",
    )
    run_epochs(job, _OneProcess())
    (found,) = epoch_checkpoints(tmp_path / "checkpoints")
    last = Path(found)
    state = torch.load(last / TRAINING_STATE)
    # 6 batches of 4 rows, 4 per step: 2 steps, and the linear schedule reached 0 there.
    assert state["scheduler"]["last_epoch"] == 2 and state["scheduler"]["_last_lr"] == [0.0]
    saved = json.loads((last / CHECKPOINT_MODEL / "config.json").read_text())
    assert saved["hidden_dropout_prob"] == saved["attention_probs_dropout_prob"] == 0.05
    assert saved["classifier_dropout"] == 0.2
