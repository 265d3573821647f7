"""Dropout masks drawn by NumPy while training on CPUs where torch draws them one at a time.

On CPU, dropout (``nn.Dropout``, and attention dropout inside SDPA) draws its mask with
``Tensor.bernoulli_``. torch hands that to MKL's parallel generator only on Intel CPUs; on any
other CPU (AMD, Apple silicon, ARM) it draws element by element on one thread, two
Mersenne-Twister numbers each, under the generator's lock. Training MiniLM (16 x 64 tokens) on
an AMD EPYC with 2 threads, those draws took 72 ms of a 580 ms step whatever the thread count:
the largest part of a step that more cores do not shorten. NumPy's PCG64 fills the same mask
about 3x faster (one float32 per element, then a vectorised compare), which took the step to
530 ms (and the one-thread step from 967 to 921 ms).

``numpy_dropout_masks`` puts such a kernel in place of ``bernoulli_(p)`` for the CPU while
training runs and takes it out afterwards (an x86 CPU's vendor is read from ``/proc/cpuinfo``:
where it cannot be, torch's kernel stays; how: ``internals.cpu_kernel``). The training loop
uses it only with ``cpu_dropout_masks: numpy`` (off by default: it overrides a torch kernel in
the whole process, and seeded results then depend on the CPU's vendor). Its generator is
seeded from torch's, so a seeded run draws the same masks every time (not the same masks as
torch's own kernel: a refit or a trial trained with it matches one trained without it within
noise, not bit for bit).
Activation checkpointing (``torch.utils.checkpoint``, not used here) restores only torch's
generator before recomputing a forward pass: under this kernel it would draw other masks.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_pipeline.internals import cpu_kernel

if TYPE_CHECKING:
    import torch

_active: list[int] = []
"""The thread whose block holds the kernel in place (at most one: blocks do not nest)."""
_lock = threading.Lock()


@functools.cache
def torch_draws_serially() -> bool:
    """Whether torch's CPU ``bernoulli_`` draws one element at a time here: it does unless
    torch has MKL and the CPU is Intel's (torch's own test: the vendor of processor 0)."""
    import torch

    if not torch.backends.mkl.is_available():  # type: ignore[no-untyped-call]
        return True
    return _cpu_vendor() not in ("GenuineIntel", "unknown")


def _cpu_vendor() -> str:
    """The x86 vendor string, ``unknown`` where it cannot be read (then torch's kernel stays)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "not x86"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


@contextlib.contextmanager
def numpy_dropout_masks(device_type: str) -> Iterator[None]:
    """Within the block, CPU ``bernoulli_(p)`` (dropout's masks) in this thread draws from a
    NumPy PCG64 seeded from torch's generator (other threads get uniform draws from torch's);
    nothing changes on GPUs, where torch serialises nothing, on Intel CPUs with MKL, or when a
    block is already open (in any thread)."""
    if device_type != "cpu" or not torch_draws_serially():
        yield
        return
    with _lock:
        if _active:
            owner = None
        else:
            owner = threading.get_ident()
            _active.append(owner)
    if owner is None:
        yield
        return
    try:
        with _kernel_in_place(owner):
            yield
    finally:
        with _lock:
            _active.clear()


@contextlib.contextmanager
def _kernel_in_place(owner: int) -> Iterator[None]:
    import numpy as np
    import torch

    seed = int(torch.randint(2**62, (1,)).item())
    numpy_generator = np.random.Generator(np.random.PCG64(seed))
    filled = (torch.float32, torch.float64)

    def bernoulli_(self: torch.Tensor, p: float = 0.5, *, generator: Any = None) -> torch.Tensor:
        if not 0 <= p <= 1:
            raise RuntimeError(f"bernoulli_ expects p to be in [0, 1], but got p={p}")
        mine = threading.get_ident() == owner  # another thread's draws leave this stream alone
        if mine and generator is None and self.is_contiguous() and self.dtype in filled:
            flat = self.detach().numpy().reshape(-1)  # the tensor's memory, written in place
            numpy_generator.random(out=flat, dtype=flat.dtype)
            return self.lt_(p)  # 1 where the uniform draw is below p: probability p
        # Another thread, dtype or layout, or the caller's own generator: torch's uniform draws.
        return self.copy_(torch.rand(self.shape, generator=generator) < p)

    with cpu_kernel("bernoulli_.float", bernoulli_):  # or torch's own, where it cannot be
        yield
