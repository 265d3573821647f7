"""Training throughput settings: precision (config check, autocast, loss scaling), length-grouped
batches, length-sorted prediction in input order, and the library learning-rate schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ray_pipeline import precision
from ray_pipeline.cli import main
from ray_pipeline.data.encode import IGNORE_INDEX
from ray_pipeline.errors import ConfigError
from ray_pipeline.loading import load_config
from ray_pipeline.models import build_model
from ray_pipeline.precision import Amp, resolve
from ray_pipeline.schema import BackboneConfig, TrainingParams
from ray_pipeline.training import batches, grouped_order, make_optimizer, predict, train_epoch
from tests.conftest import MakeExp

CPU = torch.device("cpu")


def _cpu_can(monkeypatch: pytest.MonkeyPatch, *can: str) -> None:
    """This machine's CPU, as the precision check sees it, runs ``can`` natively."""
    monkeypatch.setattr(
        precision, "supported", lambda device: ("fp32", *can) if device == "cpu" else ("fp32",)
    )


# ----------------------------------------------------------------------------- the config


@pytest.mark.parametrize("value", ["auto", "fp32", "bf16", "fp16"])
def test_every_precision_is_a_valid_setting(smoke_experiment: MakeExp, value: str) -> None:
    config = load_config(smoke_experiment(), [f"hpo.training.precision={value}"])
    assert config.hpo.training.precision == value
    assert config.hpo.training.group_by_length is False  # off by default


def test_an_unknown_precision_names_the_key(smoke_experiment: MakeExp) -> None:
    with pytest.raises(ConfigError, match=r"hpo\.training\.precision"):
        load_config(smoke_experiment(), ["hpo.training.precision=fp8"])


@pytest.mark.parametrize("value", ["bf16", "fp16"])
def test_validate_refuses_a_precision_this_cpu_cannot_run(
    smoke_experiment: MakeExp,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    value: str,
) -> None:
    _cpu_can(monkeypatch)  # a CPU without native bf16 / fp16 (AVX2, like this machine's)
    exp = str(smoke_experiment())
    assert main(["validate", "--config", exp, f"hpo.training.precision={value}"]) == 2
    err = capsys.readouterr().err
    assert "hpo.training.precision" in err and value in err and "fp32" in err
    _cpu_can(monkeypatch, value)  # a CPU that has it (AMX)
    assert main(["validate", "--config", exp, f"hpo.training.precision={value}"]) == 0


def test_validate_checks_this_machines_real_cpu(smoke_experiment: MakeExp) -> None:
    exp = str(smoke_experiment())
    can = precision.supported("cpu")
    for value in ("bf16", "fp16"):
        expected = 0 if value in can else 2
        assert main(["validate", "--config", exp, f"hpo.training.precision={value}"]) == expected


def test_run_refuses_before_ray_starts_or_anything_is_written(
    smoke_experiment: MakeExp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _cpu_can(monkeypatch)
    exp = str(smoke_experiment())
    assert main(["run", "--config", exp, "hpo.training.precision=bf16"]) == 2
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        (
            ["hpo.search_space.precision={type: categorical, choices: [fp32, fp16]}"],
            "hpo.search_space.precision",
        ),
        (
            ["resources.gpus_per_worker=1", "final_training.resources.gpus_per_worker=0"],
            None,  # auto on both: nothing to refuse
        ),
        (
            [
                "resources.gpus_per_worker=1",
                "hpo.training.precision=bf16",
                "final_training.resources.gpus_per_worker=0",
            ],
            "final_training.resources.gpus_per_worker",
        ),
        (["benchmark.benchmarking.precision=bf16"], "benchmark.benchmarking.precision"),
    ],
)
def test_every_place_a_precision_runs_is_checked(
    smoke_experiment: MakeExp,
    monkeypatch: pytest.MonkeyPatch,
    overrides: list[str],
    where: str | None,
) -> None:
    _cpu_can(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = load_config(smoke_experiment(), overrides)
    if where is None:
        precision.check_config(config)
        return
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        precision.check_config(config)


def test_gpu_training_without_a_local_gpu_is_left_to_the_worker(
    smoke_experiment: MakeExp, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cpu_can(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    overrides = ["resources.gpus_per_worker=1", "hpo.training.precision=bf16"]
    precision.check_config(load_config(smoke_experiment(), overrides))


def test_auto_is_bf16_only_on_gpus_that_have_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve("auto", CPU) == "fp32"
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(precision, "supported", lambda device: ("fp32", "fp16", "bf16"))
    assert resolve("auto", cuda) == "bf16"
    monkeypatch.setattr(precision, "supported", lambda device: ("fp32", "fp16"))  # a V100
    monkeypatch.setattr(precision, "_gpu_name", lambda device: "Tesla V100")
    assert resolve("auto", cuda) == "fp32"
    assert resolve("fp16", cuda) == "fp16"
    with pytest.raises(ConfigError, match=r"bf16 needs .*Tesla V100"):
        resolve("bf16", cuda, "hpo.training.precision")


def test_precision_and_grouping_are_part_of_the_study_key(smoke_experiment: MakeExp) -> None:
    from ray_pipeline.identity import study_key

    exp = smoke_experiment()
    base = load_config(exp)
    keys = {
        str(study_key(c, c.model.backbones[0]))
        for c in (
            base,
            load_config(exp, ["hpo.training.precision=fp32"]),
            load_config(exp, ["hpo.training.group_by_length=true"]),
        )
    }
    assert len(keys) == 3


# ------------------------------------------------------------------------- mixed precision


def _tiny_model() -> Any:
    backbone = BackboneConfig.model_validate(
        {
            "name": "tiny",
            "random": {
                "model_type": "bert",
                "config": {
                    "hidden_size": 16,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "intermediate_size": 32,
                },
            },
        }
    )
    return build_model(backbone, "sequence_classification", ("a", "b"), seed=0)


def _rows(lengths: list[int]) -> list[dict[str, Any]]:
    return [
        {
            "input_ids": [5 + (i + j) % 20 for j in range(n)],
            "attention_mask": [1] * n,
            "token_type_ids": [0] * n,
            "labels": i % 2,
        }
        for i, n in enumerate(lengths)
    ]


@pytest.mark.parametrize(("name", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_training_runs_under_autocast_in_the_asked_precision(name: str, dtype: Any) -> None:
    model = _tiny_model()
    seen: list[Any] = []
    model.classifier.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    rows = _rows([6, 9, 4, 7] * 4)
    optimizer, scheduler = make_optimizer(model, TrainingParams(learning_rate=1e-3), 4)
    amp = Amp(name, CPU)  # type: ignore[arg-type]
    before = [p.detach().clone() for p in model.parameters()]
    loss = train_epoch(model, batches(rows, 4, 0, shuffle_seed=1), optimizer, scheduler, amp)
    assert seen and set(seen) == {dtype}
    assert loss == loss and loss > 0  # finite
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert (amp.scaler is not None) == (name == "fp16")
    if name == "fp16":
        assert amp.state_dict()["scale"] > 0
        again = Amp("fp16", CPU)
        again.load_state_dict(amp.state_dict())
        assert again.state_dict() == amp.state_dict()


def test_fp32_trains_without_autocast() -> None:
    model = _tiny_model()
    seen: list[Any] = []
    model.classifier.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    optimizer, scheduler = make_optimizer(model, TrainingParams(), 2)
    train_epoch(model, batches(_rows([5, 8]), 1, 0), optimizer, scheduler, Amp("fp32", CPU))
    assert set(seen) == {torch.float32}


def test_the_schedule_is_linear_warmup_then_linear_decay_to_zero() -> None:
    model = _tiny_model()
    params = TrainingParams(learning_rate=1.0, warmup_ratio=0.2)
    optimizer, scheduler = make_optimizer(model, params, total_steps=10)
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    rates.append(scheduler.get_last_lr()[0])
    assert rates == pytest.approx([0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0])


# --------------------------------------------------------------------------- less padding


LENGTHS = [3 + (i * 37) % 61 for i in range(203)]  # 203 rows of 3..63 tokens, in no order


def _padded_tokens(order: list[int], batch_size: int) -> int:
    return sum(
        max(LENGTHS[i] for i in order[s : s + batch_size]) * len(order[s : s + batch_size])
        for s in range(0, len(order), batch_size)
    )


def test_length_grouping_keeps_every_example_once_and_is_deterministic() -> None:
    order = grouped_order(LENGTHS, batch_size=8, seed=3)
    assert sorted(order) == list(range(len(LENGTHS)))  # every row exactly once
    assert grouped_order(LENGTHS, batch_size=8, seed=3) == order  # the same for a seed
    assert grouped_order(LENGTHS, batch_size=8, seed=4) != order  # a new order every epoch
    assert max(LENGTHS[i] for i in order[:8]) == max(LENGTHS)  # the longest batch first
    random = torch.randperm(len(LENGTHS), generator=torch.Generator().manual_seed(3)).tolist()
    assert _padded_tokens(order, 8) < 0.8 * _padded_tokens(random, 8)


def test_grouped_batches_are_full_except_the_last() -> None:
    rows = _rows(LENGTHS)
    sizes = [len(b["labels"]) for b in batches(rows, 8, 0, shuffle_seed=5, group_by_length=True)]
    assert sizes == [8] * 25 + [3]
    seen = [
        tuple(row)
        for b in batches(rows, 8, 0, shuffle_seed=5, group_by_length=True)
        for row, mask in zip(b["input_ids"].tolist(), b["attention_mask"].tolist(), strict=True)
        for row in [row[: sum(mask)]]
    ]
    assert sorted(seen) == sorted(tuple(r["input_ids"]) for r in rows)

    def padded(grouped: bool) -> int:
        chosen = batches(rows, 8, 0, shuffle_seed=5, group_by_length=grouped)
        return sum(b["input_ids"].numel() for b in chosen)

    assert padded(grouped=True) < 0.8 * padded(grouped=False)


class _EchoModel(torch.nn.Module):
    """Logits that name the input: per sequence, class = length % 3; per token, = id % 3."""

    def __init__(self, per_token: bool) -> None:
        super().__init__()
        self.per_token = per_token

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> Any:
        classes = input_ids % 3 if self.per_token else attention_mask.sum(dim=1) % 3
        return type("Out", (), {"logits": torch.nn.functional.one_hot(classes, 3).float()})


def test_predictions_come_back_in_input_order() -> None:
    rows = _rows([9, 2, 14, 5, 5, 11, 3, 8, 2, 13])
    assert predict(_EchoModel(False), rows, 3, 0) == [len(r["input_ids"]) % 3 for r in rows]
    for r in rows:
        r["labels"] = [IGNORE_INDEX, *[1] * (len(r["input_ids"]) - 2), IGNORE_INDEX]
    expected = [[t % 3 for t in r["input_ids"][1:-1]] for r in rows]
    assert predict(_EchoModel(True), rows, 3, 0) == expected
