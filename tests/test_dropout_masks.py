"""Dropout masks from NumPy while training on CPUs where torch draws them one at a time
(``ray_pipeline.dropout_masks``): the masks' distribution and seeding, torch's own kernel back
afterwards, the CPUs it applies to, and the training loop using it with ``cpu_dropout_masks:
numpy`` (only then). The kernel is forced on (``torch_draws_serially``) so that these tests
mean the same on Intel and AMD machines."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

import ray_pipeline.dropout_masks as dropout_masks
from ray_pipeline.dropout_masks import numpy_dropout_masks
from ray_pipeline.errors import ConfigError
from ray_pipeline.loading import load_config
from ray_pipeline.schema import TrainingParams
from ray_pipeline.schema.training import DROPOUT_MASKS_ENV
from ray_pipeline.training import batches, make_optimizer, train_epoch
from tests.conftest import MakeExp
from tests.test_training_settings import _model, _rows

DROP = 0.1


@pytest.fixture
def serial_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A CPU where torch would draw the masks serially (the kernel goes in)."""
    monkeypatch.setattr(dropout_masks, "torch_draws_serially", lambda: True)
    yield


def _dropped(seed: int, size: int = 1_000_000) -> torch.Tensor:
    torch.manual_seed(seed)
    with numpy_dropout_masks("cpu"):
        return torch.nn.functional.dropout(torch.ones(size), DROP, training=True)


def test_masks_drop_the_asked_share_and_scale_the_rest(serial_cpu: None) -> None:
    out = _dropped(seed=1)
    # 1M draws: the share's standard deviation is 0.0003; 0.002 is more than 6 of them.
    assert abs(float((out == 0).float().mean()) - DROP) < 0.002
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - DROP)))  # scaled, the rest 0


def test_a_seeded_run_draws_the_same_masks_and_another_seed_others(serial_cpu: None) -> None:
    assert torch.equal(_dropped(seed=1), _dropped(seed=1))
    assert not torch.equal(_dropped(seed=1), _dropped(seed=2))


def test_the_kernel_is_numpys_inside_the_block_and_torchs_after(serial_cpu: None) -> None:
    def torch_own(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.nn.functional.dropout(torch.ones(10_000), DROP, training=True)

    before = torch_own(3)
    assert not torch.equal(_dropped(seed=3, size=10_000), before)
    assert torch.equal(torch_own(3), before)  # torch's kernel is back


def test_other_layouts_and_a_callers_generator_still_get_bernoulli_draws(
    serial_cpu: None,
) -> None:
    with numpy_dropout_masks("cpu"):
        strided = torch.empty(1000, 400).t().bernoulli_(0.25)  # not contiguous
        halves = torch.empty(400_000, dtype=torch.bfloat16).bernoulli_(0.25)
        seeded = [
            torch.empty(1000).bernoulli_(0.5, generator=torch.Generator().manual_seed(7))
            for _ in range(2)
        ]
    for mask in (strided, halves):
        assert bool(((mask == 0) | (mask == 1)).all())
        assert abs(float(mask.float().mean()) - 0.25) < 0.005
    assert torch.equal(seeded[0], seeded[1])


@pytest.mark.parametrize(
    ("mkl", "vendor", "kernel"),
    [
        (True, "AuthenticAMD", True),
        (True, "not x86", True),  # Apple silicon, ARM
        (True, "GenuineIntel", False),  # torch's MKL kernel is parallel: kept
        (True, "unknown", False),  # cannot tell: torch's kernel stays
        (False, "GenuineIntel", True),  # a torch built without MKL draws serially
    ],
)
def test_the_kernel_replaces_torchs_only_where_torch_draws_serially(
    monkeypatch: pytest.MonkeyPatch, mkl: bool, vendor: str, kernel: bool
) -> None:
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: mkl)
    monkeypatch.setattr(dropout_masks, "_cpu_vendor", lambda: vendor)
    dropout_masks.torch_draws_serially.cache_clear()
    try:
        assert dropout_masks.torch_draws_serially() is kernel
    finally:
        dropout_masks.torch_draws_serially.cache_clear()


def _train_once() -> tuple[float, torch.Tensor]:
    """One epoch of the tiny BERT with dropout 0.1, from the same seed: its mean loss and
    trained weights."""
    params = TrainingParams(dropout=DROP, classifier_dropout=0.0, cpu_dropout_masks="numpy")
    model = _model(params)
    optimizer, scheduler = make_optimizer(model, params, 4)
    torch.manual_seed(0)
    loss = train_epoch(model, batches(_rows(32), 8, 0), optimizer, scheduler, None, params)
    return loss, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_the_training_loop_draws_its_masks_from_the_kernel(serial_cpu: None) -> None:
    runs = [_train_once(), _train_once()]
    assert runs[0][0] == runs[1][0]  # seeded: the same masks, the same run
    assert torch.equal(runs[0][1], runs[1][1])


def _kernel_in_place_per_forward_pass(params: TrainingParams) -> list[bool]:
    seen: list[bool] = []

    def record(*_: object) -> None:
        seen.append(dropout_masks._active == [threading.get_ident()])

    model = _model(params)
    model.register_forward_pre_hook(record)
    optimizer, scheduler = make_optimizer(model, params, 4)
    train_epoch(model, batches(_rows(32), 8, 0), optimizer, scheduler, None, params)
    return seen


def test_the_kernel_is_in_place_for_every_forward_pass_of_an_epoch(serial_cpu: None) -> None:
    seen = _kernel_in_place_per_forward_pass(
        TrainingParams(dropout=DROP, cpu_dropout_masks="numpy")
    )
    assert len(seen) == 4 and all(seen), seen
    assert not dropout_masks._active  # and out of place after it


def test_a_machine_may_choose_the_masks_of_configs_that_leave_them_out(
    monkeypatch: pytest.MonkeyPatch, smoke_experiment: MakeExp
) -> None:
    """RAY_PIPELINE_CPU_DROPOUT_MASKS (the suite runs with and without it): the masks of a
    config that does not set them; a config's own value wins, a record's training settings
    keep the default they were written with, and a bad value names the variable."""
    path = smoke_experiment()
    monkeypatch.setenv(DROPOUT_MASKS_ENV, "numpy")
    assert load_config(path).hpo.training.cpu_dropout_masks == "numpy"
    torch_set = load_config(path, ["hpo.training.cpu_dropout_masks=torch"])
    assert torch_set.hpo.training.cpu_dropout_masks == "torch"
    assert TrainingParams().cpu_dropout_masks == "torch"
    monkeypatch.setenv(DROPOUT_MASKS_ENV, "mkl")
    with pytest.raises(ConfigError, match=f"{DROPOUT_MASKS_ENV}='mkl' in the environment"):
        load_config(path)
    monkeypatch.delenv(DROPOUT_MASKS_ENV)
    assert load_config(path).hpo.training.cpu_dropout_masks == "torch"


def test_the_training_loop_keeps_torchs_kernel_by_default(serial_cpu: None) -> None:
    seen = _kernel_in_place_per_forward_pass(TrainingParams(dropout=DROP))
    assert seen == [False] * 4


def _masks_with(other_thread_draws: bool) -> torch.Tensor:
    torch.manual_seed(5)
    with numpy_dropout_masks("cpu"):
        first = torch.nn.functional.dropout(torch.ones(1000), DROP, training=True)
        if other_thread_draws:
            other = threading.Thread(target=lambda: torch.empty(100_000).bernoulli_(0.5))
            other.start()
            other.join()
        second = torch.nn.functional.dropout(torch.ones(1000), DROP, training=True)
    return torch.cat([first, second])


def test_another_threads_draws_leave_the_training_threads_masks_alone(serial_cpu: None) -> None:
    assert torch.equal(_masks_with(other_thread_draws=True), _masks_with(other_thread_draws=False))


def test_an_error_inside_the_block_puts_torchs_kernel_back(serial_cpu: None) -> None:
    torch.manual_seed(3)
    before = torch.empty(1000).bernoulli_(0.5)
    with pytest.raises(ValueError, match="boom"), numpy_dropout_masks("cpu"):
        raise ValueError("boom")
    torch.manual_seed(3)
    assert torch.equal(torch.empty(1000).bernoulli_(0.5), before) and not dropout_masks._active


def test_a_probability_outside_0_1_is_refused_as_torch_refuses_it(serial_cpu: None) -> None:
    with numpy_dropout_masks("cpu"), pytest.raises(RuntimeError, match=r"p to be in \[0, 1\]"):
        torch.empty(10).bernoulli_(1.5)
