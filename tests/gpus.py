"""GPUs in the test suite: none for a test unless it asks for one.

``hide()`` (called when tests/conftest.py is imported, before any test, Ray cluster or child
process starts) sets CUDA_VISIBLE_DEVICES in os.environ, so that every process the tests start
inherits it: in-process Ray clusters (their raylet and workers), `ray start` nodes, the CLI as a
child process and the local Ray cluster it starts. Its value is ``""`` (torch sees no CUDA device
and Ray detects no GPU), or with RAY_PIPELINE_TEST_FAKE_GPUS=1 the ids of ``FAKE_GPUS`` fake GPUs
(``-1,-2``): Ray takes ids from CUDA_VISIBLE_DEVICES and hands them to tasks, CUDA stops at the
first id it cannot resolve, so torch sees no device either way. The clusters the suite starts
declare ``declared_gpus()`` GPUs (0; with RAY_PIPELINE_TEST_FAKE_GPUS=1, ``FAKE_GPUS``): a run
of the suite with it shows that what the pipeline does by default on a cluster with GPUs (the
benchmark's device, the refit's GPUs per worker, precision auto) does not reach the tests that
train on CPUs. (The pipeline counts a GPU for those defaults only where torch can use it:
``ray_pipeline.resources.torch_uses_gpus``. It tells fake GPUs on its own node from real ones
with any torch, on another node of a `ray start` cluster only with a CPU build of torch: the
switch is meant for machines without a GPU, where `make install` puts a CPU build.)

What the host showed before is kept in RAY_PIPELINE_TEST_HOST_GPUS (JSON: null when
CUDA_VISIBLE_DEVICES was unset), which pytest-xdist workers inherit although they start after
the hiding. Tests marked ``gpu`` get a GPU back in child processes only: ``gpu_env()`` is the
environment with one of the host's GPUs visible, for the CLI run as a child (its local Ray
cluster then declares that GPU). Without a CUDA GPU there (``cuda_missing()``) they skip.
CUDA reads CUDA_VISIBLE_DEVICES once, when a process first initialises it: the test process
itself never sees a GPU."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

VISIBLE = "CUDA_VISIBLE_DEVICES"
HOST_ENV = "RAY_PIPELINE_TEST_HOST_GPUS"
"""The host's CUDA_VISIBLE_DEVICES before the suite hid its GPUs (JSON; null: unset)."""
FAKE_ENV = "RAY_PIPELINE_TEST_FAKE_GPUS"
"""1: the clusters the suite starts declare ``FAKE_GPUS`` GPUs that torch cannot use."""
FAKE_GPUS = 2


def declared_gpus() -> int:
    """The GPUs the suite's Ray clusters declare unless a test asks for others."""
    return FAKE_GPUS if os.environ.get(FAKE_ENV, "") not in ("", "0") else 0


def fake_ids(count: int) -> str:
    """CUDA_VISIBLE_DEVICES for ``count`` fake GPUs: ids Ray counts and hands out, and in which
    CUDA finds no device (it stops at the first id it cannot resolve)."""
    return ",".join(f"-{i}" for i in range(1, count + 1))


def hide() -> None:
    """No GPU for torch in this process and in every process it starts (see the module)."""
    if HOST_ENV not in os.environ:  # a pytest-xdist worker: its controller hid them already
        os.environ[HOST_ENV] = json.dumps(os.environ.get(VISIBLE))
    os.environ[VISIBLE] = fake_ids(declared_gpus())


@contextmanager
def declaring(gpus: int) -> Iterator[None]:
    """Within the block, a Ray cluster started here (``ray.init``, `ray start`) may declare
    ``gpus`` fake GPUs: Ray refuses to declare more GPUs than CUDA_VISIBLE_DEVICES lists. The
    raylet and its workers keep the fake ids; this process gets its own value back."""
    before = os.environ[VISIBLE]
    if gpus > (len(before.split(",")) if before else 0):
        os.environ[VISIBLE] = fake_ids(gpus)
    try:
        yield
    finally:
        os.environ[VISIBLE] = before


def start_ray(num_cpus: int, num_gpus: int | None = None, **options: Any) -> None:
    """``ray.init`` of a local test cluster with ``num_cpus`` CPUs and ``num_gpus`` fake GPUs
    (None: ``declared_gpus()``)."""
    import ray

    gpus = declared_gpus() if num_gpus is None else num_gpus
    with declaring(gpus):
        ray.init(num_cpus=num_cpus, num_gpus=gpus, **options)


def host_gpus() -> str | None:
    """The host's CUDA_VISIBLE_DEVICES before the suite hid its GPUs (None: unset, all)."""
    value = json.loads(os.environ.get(HOST_ENV, "null"))
    return value if isinstance(value, str) else None


def gpu_id() -> str:
    """The one host GPU that ``gpu_env()`` shows, as CUDA_VISIBLE_DEVICES (and Ray) name it."""
    shown = host_gpus()
    return "0" if shown is None else shown.split(",")[0].strip()


def gpu_env() -> dict[str, str]:
    """This environment with one host GPU visible, fake GPUs off: for a child process of a
    test marked ``gpu`` (a local Ray cluster it starts declares that GPU)."""
    env = {**os.environ, VISIBLE: gpu_id()}
    env.pop(FAKE_ENV, None)
    env.pop("RAY_ADDRESS", None)
    return env


PROBE = (
    "import torch; c = torch.cuda.is_available(); "
    "print(c and torch.cuda.is_bf16_supported(including_emulation=False), c)"
)


@functools.cache
def cuda_probe() -> tuple[bool, bool, str]:
    """(a CUDA GPU is usable, it has native bf16, why not), asked of a child process with
    ``gpu_env()``; without one on the host no child is started."""
    import torch

    if torch.version.cuda is None:
        return False, False, f"no CUDA GPU: torch {torch.__version__} is built without CUDA"
    if host_gpus() in ("", "-1"):
        return False, False, f"no CUDA GPU: the host sets {VISIBLE}={host_gpus()!r}"
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE],
            env=gpu_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        return False, False, "no CUDA GPU: asking torch for one took over 300 s"
    words = done.stdout.split()
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return False, False, f"no CUDA GPU: asking torch with {VISIBLE}={gpu_id()} failed: {said}"
    if words[-1:] != ["True"]:
        return False, False, f"no CUDA GPU: torch sees no CUDA device with {VISIBLE}={gpu_id()}"
    return True, words[0] == "True", ""


def cuda_missing() -> str | None:
    """Why a test marked ``gpu`` cannot run here (None: a CUDA GPU is at hand)."""
    usable, _, why = cuda_probe()
    return None if usable else why
