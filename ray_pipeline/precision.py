"""Numeric precision of training and inference: which precisions a device can run, what
``auto`` means, the config check that refuses the impossible before anything starts, and the
autocast / loss scaling the training loop applies (docs/configuration.md#precision-and-padding).

``auto`` is bf16 on CUDA GPUs with native bfloat16 (Ampere and later), fp32 everywhere else:
on CPUs bf16 autocast pays only with AMX/AVX512-BF16 and changes the numbers, so it is asked
for explicitly. TF32 matmuls are on for every CUDA device (``allow_tf32``).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal

from ray_pipeline.errors import ConfigError
from ray_pipeline.internals import mkldnn_supports
from ray_pipeline.schema.training import Precision

if TYPE_CHECKING:
    import torch

    from ray_pipeline.schema import PipelineConfig

Resolved = Literal["fp32", "bf16", "fp16"]
"""What a device trains or infers in."""

REQUIREMENTS: dict[str, str] = {
    "bf16": "a CUDA GPU with native bfloat16 (compute capability 8.0+: Ampere or later) or a "
    "CPU with AVX512-BF16/AMX",
    "fp16": "a CUDA GPU, or a CPU with AMX-FP16",
}


def dtype_of(precision: Resolved) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def supported(device_type: str) -> tuple[Resolved, ...]:
    """The precisions ``device_type`` (``cpu`` or ``cuda``) of this process runs natively."""
    import torch

    if device_type == "cuda":
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return ("fp32", "fp16", "bf16") if bf16 else ("fp32", "fp16")
    found: list[Resolved] = ["fp32"]
    if mkldnn_supports("bf16"):
        found.append("bf16")
    if mkldnn_supports("fp16"):
        found.append("fp16")
    return tuple(found)


def describe_cpu() -> str:
    import torch

    return f"this CPU ({torch.backends.cpu.get_cpu_capability()})"


def resolve(requested: Precision, device: torch.device, where: str = "precision") -> Resolved:
    """What ``requested`` means on ``device``; ConfigError (at ``where``) when the device
    cannot run it. Turns TF32 matmuls on for a CUDA device."""
    import torch

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    can = supported(device.type)
    if requested == "auto":
        return "bf16" if device.type == "cuda" and "bf16" in can else "fp32"
    if requested not in can:
        here = describe_cpu() if device.type == "cpu" else f"this GPU ({_gpu_name(device)})"
        raise ConfigError.at(where, _refusal(requested, here))
    return requested


def _gpu_name(device: torch.device) -> str:
    import torch

    return str(torch.cuda.get_device_name(device))


def _refusal(requested: str, here: str) -> str:
    return (
        f"{requested} needs {REQUIREMENTS[requested]}; {here} has none. Use precision auto "
        "(bf16 on GPUs that have it, fp32 elsewhere) or fp32"
    )


def check_config(config: PipelineConfig) -> None:
    """Refuse (exit 2) a precision the configured device cannot run, where this machine can
    tell: CPU training is checked against this machine's CPU, GPU training against a GPU
    that this process sees (otherwise the worker checks when it starts)."""
    hpo_device = "cuda" if config.resources.gpus_per_worker > 0 else "cpu"
    space = config.hpo.search_space.get("precision")
    searched = [config.hpo.training.precision, *getattr(space, "choices", [])]
    where = "hpo.search_space.precision" if space is not None else "hpo.training.precision"
    asked: list[tuple[str, Iterable[Any], str]] = [(where, searched, hpo_device)]
    final_gpus = config.final_training.resources.gpus_per_worker
    if final_gpus is not None and (final_gpus > 0) != (hpo_device == "cuda"):
        final_device = "cuda" if final_gpus > 0 else "cpu"
        asked.append(("final_training.resources.gpus_per_worker", searched, final_device))
    bench = config.benchmark.benchmarking
    if bench.precision is not None:
        bench_device = bench.device or hpo_device
        asked.append(("benchmark.benchmarking.precision", [bench.precision], bench_device))
    for where, values, device_type in asked:
        _check(where, values, device_type)


def _check(where: str, values: Iterable[Any], device_type: str) -> None:
    reduced = [v for v in values if v in ("bf16", "fp16")]  # auto and fp32 run anywhere
    if not reduced:
        return
    import torch

    if device_type == "cuda" and not torch.cuda.is_available():
        return  # the GPUs are on other machines: the worker checks when it starts
    can = supported(device_type)
    for value in reduced:
        if value not in can:
            here = describe_cpu() if device_type == "cpu" else "this machine's GPU"
            trains = "on CPUs" if device_type == "cpu" else "on GPUs"
            raise ConfigError.at(where, f"training runs {trains}: {_refusal(value, here)}")


class Amp:
    """Autocast and, for fp16, loss scaling: one training loop for every precision."""

    def __init__(self, precision: Resolved, device: torch.device) -> None:
        import torch

        self.precision, self.device_type = precision, device.type
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> AbstractContextManager[Any]:
        import torch

        return torch.autocast(
            self.device_type, dtype=dtype_of(self.precision), enabled=self.precision != "fp32"
        )

    def backward(self, loss: Any) -> None:
        """Back-propagate ``loss`` (a scalar tensor; scaled for fp16). Gradients add up until
        ``step``."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float | None = None) -> None:
        """Step ``optimizer`` on the gradients so far, their total norm clipped to
        ``max_grad_norm`` first (for fp16, after unscaling them: the bound is on the true
        gradients; a step with inf or NaN gradients is skipped and the scale lowered)."""
        import torch

        if max_grad_norm is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scaler is None else dict(self.scaler.state_dict())

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
