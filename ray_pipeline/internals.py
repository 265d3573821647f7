"""Every use ray_pipeline makes of a dependency's private or undocumented internals, in one
place: a function or constant each, which the rest of the package calls instead of touching
the internal itself. Each checks that the internal is still there in the shape it was read
from (Ray 2.60, torch 2.13, MLflow 3.x) and otherwise takes a safe fallback, warning once
where a user would notice the difference. ``INTERNALS`` lists them (docs/architecture.md's
"Dependency internals" mirrors it); tests/test_internals.py checks each guard passes on the
installed versions and each fallback is taken, without an error, where the internal is gone.

Imports only the standard library; each dependency inside the function that needs it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple


@dataclass(frozen=True)
class Internal:
    """One reach into a dependency's internals."""

    name: str
    """The function or constant of this module that holds it."""
    dependency: str
    used: str
    """What of the dependency is used."""
    where: str
    """The modules that use it (through ``name``)."""
    guard: str
    """What is checked before it is used."""
    fallback: str
    """What happens where the check fails."""


_warned: set[str] = set()
"""The internals warned about in this process (each is warned about once)."""


def _warn_once(name: str, message: str) -> None:
    if name not in _warned:
        _warned.add(name)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# torch ----------------------------------------------------------------------------------------


def mkldnn_supports(precision: Literal["bf16", "fp16"]) -> bool:
    """Whether oneDNN runs ``precision`` natively on this CPU (torch's private probe; torch has
    no public one). False, warned once, where this torch has no such probe or it fails."""
    import torch

    probe = f"_is_mkldnn_{precision}_supported"
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except Exception as exc:  # any failure of a private probe means: cannot tell
        _warn_once(
            probe,
            f"torch {torch.__version__}: torch.ops.mkldnn.{probe}() is unavailable ({exc!r}); "
            f"{precision} is taken as unsupported on this CPU (fp32 and auto still run)",
        )
        return False


KERNEL_OVERRIDE_WARNING = "(?s).*Overriding a previously registered kernel"
"""torch's warning when a kernel replaces one it registered itself: meant here."""


@contextlib.contextmanager
def cpu_kernel(operator: str, kernel: Callable[..., Any]) -> Iterator[bool]:
    """Within the block, ``kernel`` replaces torch's CPU kernel of the aten ``operator`` (an
    overload such as ``bernoulli_.float``) in the whole process; yields whether it is in place.
    False (torch's own kernel stays; warned once) where this torch cannot both register it
    (``torch.library.Library.impl``) and take it out again (the private ``Library._destroy``)."""
    import torch

    library_class = getattr(torch.library, "Library", None)
    needed = ("impl", "_destroy")
    if library_class is None or not all(hasattr(library_class, m) for m in needed):
        _warn_once(
            "cpu_kernel",
            f"torch {torch.__version__}: torch.library.Library has no impl/_destroy; "
            f"torch's own CPU kernel of {operator} stays",
        )
        yield False
        return
    library: Any = None
    try:
        library = library_class("aten", "IMPL")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", KERNEL_OVERRIDE_WARNING)
            library.impl(operator, kernel, "CPU")
    except Exception as exc:  # a registration this torch refuses: its own kernel stays
        if library is not None:
            with contextlib.suppress(Exception):
                library._destroy()
        _warn_once(
            "cpu_kernel",
            f"torch {torch.__version__}: cannot replace the CPU kernel of {operator} "
            f"({exc!r}); torch's own kernel stays",
        )
        yield False
        return
    try:
        yield True
    finally:
        library._destroy()  # torch's own kernel is back


# Ray ------------------------------------------------------------------------------------------


def _parameters(method: Any) -> tuple[str, ...]:
    """The names of ``method``'s parameters; none where it is not a function."""
    try:
        return tuple(inspect.signature(method).parameters) if callable(method) else ()
    except (TypeError, ValueError):
        return ()


MEDIAN_RULE_HOOK = "_on_insufficient_samples"
"""The method Ray Tune's MedianStoppingRule asks whether to pause a trial it cannot judge yet."""
MEDIAN_RULE_HOOK_PARAMETERS = ("self", "tune_controller", "trial", "time")


def median_rule_hook() -> str | None:
    """``MEDIAN_RULE_HOOK`` where this Ray's MedianStoppingRule has it with the parameters it
    was read with; None (Ray's stock rule, which pauses such trials; warned once) elsewhere."""
    from ray.tune.schedulers import MedianStoppingRule

    hook = getattr(MedianStoppingRule, MEDIAN_RULE_HOOK, None)
    if _parameters(hook) == MEDIAN_RULE_HOOK_PARAMETERS:
        return MEDIAN_RULE_HOOK
    import ray

    _warn_once(
        MEDIAN_RULE_HOOK,
        f"ray {ray.__version__}: MedianStoppingRule has no {MEDIAN_RULE_HOOK}"
        f"{MEDIAN_RULE_HOOK_PARAMETERS}; hpo.scheduler median uses Ray's stock rule, which "
        "pauses a trial it cannot judge yet while others wait (checkpointed and restored later)",
    )
    return None


def trial_failures(trial: Any) -> int | None:
    """How many times a Ray Tune ``Trial`` has failed (its ``num_failures`` property, which the
    DeveloperAPI class does not document); None (warned once) where it has none."""
    failures = getattr(trial, "num_failures", None)
    if isinstance(failures, int):
        return failures
    _warn_once("num_failures", "Ray Tune's Trial has no num_failures: retries are not numbered")
    return None


TUNE_FAILURE_HANDLERS = (
    ("_actor_failed", ("self", "tracked_actor", "exception")),
    ("_trial_task_failure", ("self", "trial", "exception")),
)
"""The methods of Ray Tune's ``TuneController`` that the loss of a trial process reaches, with
the parameters they were read with."""
TUNE_FAILURES_ONCE = "_ray_pipeline_failures_once"
"""Marks ``TuneController`` as guarded in this process (the guard goes in once)."""
_HANDLED = "_ray_pipeline_handled"
"""The (trial, exception) a controller's ``_actor_failed`` last handled for a waiting trial."""


def tune_failures_once() -> bool:
    """Make Ray Tune handle the loss of a reused trial process once in this process (where
    Tune's controller runs); whether it does. Tune hands a cached trial process to a trial that
    waits (PENDING) and sends it a ``reset``; where that process is gone (its node lost), Ray
    2.60 calls two handlers with the one ``RayActorError``: ``TuneController._actor_failed``
    counts a failure and requeues the trial, then the reset's ``_trial_task_failure`` counts a
    second one and errors the waiting trial for good, retries left or not. Wrapped here, that
    second call is skipped for the same trial and exception object. False (warned once) where
    this Ray's controller has not those methods with those parameters: the caller then turns
    ``reuse_actors`` off."""
    from ray.tune.execution.tune_controller import TuneController as Controller

    if getattr(Controller, TUNE_FAILURES_ONCE, False):
        return True
    if any(_parameters(getattr(Controller, n, None)) != p for n, p in TUNE_FAILURE_HANDLERS):
        import ray

        _warn_once(
            "tune_failures_once",
            f"ray {ray.__version__}: Tune's controller has no _actor_failed(tracked_actor, "
            "exception) / _trial_task_failure(trial, exception) to guard (a lost reused trial "
            "process reaches both, which errors a trial with retries left): each trial starts "
            "in a fresh process (reuse_actors off, seconds more per trial)",
        )
        return False
    actor_failed, task_failure = Controller._actor_failed, Controller._trial_task_failure

    @functools.wraps(actor_failed)
    def _actor_failed(self: Any, tracked_actor: Any, exception: Exception) -> None:
        trial = getattr(self, "_actor_to_trial", {}).get(tracked_actor)
        waiting = trial is not None and trial.status in ("PENDING", "PAUSED")
        actor_failed(self, tracked_actor, exception)  # a waiting trial's failure: handled
        resetting = getattr(self, "_resetting_trials", None)
        if waiting and isinstance(resetting, set):  # (else Ray's own handling, twice)
            setattr(self, _HANDLED, (trial, exception))  # the task's handler comes next
            resetting.discard(trial)  # its reset is over: else the trial waits for it forever

    @functools.wraps(task_failure)
    def _trial_task_failure(self: Any, trial: Any, exception: Exception) -> None:
        handled = getattr(self, _HANDLED, None)
        if handled is not None and handled[0] is trial and handled[1] is exception:
            setattr(self, _HANDLED, None)  # the same failure, handled already
            return
        task_failure(self, trial, exception)

    wrappers = {"_actor_failed": _actor_failed, "_trial_task_failure": _trial_task_failure}
    for name, wrapper in wrappers.items():
        setattr(Controller, name, wrapper)
    setattr(Controller, TUNE_FAILURES_ONCE, True)
    return True


CHECKPOINT_PATH_KEY = "checkpoint_path"
"""The metric under which Ray Train's TuneReportCallback (Ray 2.60) reports a checkpoint."""


def train_checkpoint_key() -> str:
    """The metric under which Ray Train's ``TuneReportCallback`` hands a worker group's
    checkpoint path to Tune (the undocumented constant of its module); ``CHECKPOINT_PATH_KEY``
    (warned once) where that module no longer has it."""
    try:
        from ray.tune.integration import ray_train

        return str(ray_train.CHECKPOINT_PATH_KEY)
    except (ImportError, AttributeError) as exc:
        _warn_once(
            "train_checkpoint_key",
            f"Ray's TuneReportCallback names no checkpoint key ({exc!r}): looking for a "
            f"worker-group trial's checkpoint under {CHECKPOINT_PATH_KEY!r}",
        )
        return CHECKPOINT_PATH_KEY


CHECKPOINT_LOGGERS = ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage")
"""Ray's internal modules whose loggers print "Checkpoint successfully created" at INFO."""


@functools.cache
def checkpoint_loggers() -> tuple[str, ...]:
    """Those of ``CHECKPOINT_LOGGERS`` that are modules of this Ray (the others would quiet
    nothing: Ray's per-checkpoint lines show)."""
    found = []
    for name in CHECKPOINT_LOGGERS:
        try:
            if importlib.util.find_spec(name) is not None:
                found.append(name)
        except (ImportError, ValueError):
            continue
    return tuple(found)


TUNE_STATUSES = frozenset({"PENDING", "RUNNING", "PAUSED", "TERMINATED", "ERROR"})
"""A trial's statuses in Tune's experiment snapshot."""


class SnapshotTrial(NamedTuple):
    """One trial of a Tune experiment snapshot."""

    directory: str | None
    """Its directory, relative to the round (None before it started)."""
    status: str
    checkpoint: str | None
    """The checkpoint directory its last result names, if any."""


def tune_snapshot_trials(text: str, source: str) -> list[SnapshotTrial] | None:
    """The trials of a Tune experiment snapshot (``experiment_state-<time>.json``, named
    ``source`` in the warning; Tune's undocumented format); None (the caller skips what it
    wanted the snapshot for; warned once) where ``text`` is not in the shape read from Ray
    2.60: ``trial_data`` holds per trial a JSON state (``relative_logdir``, ``status``) and JSON
    run metadata (``last_result``)."""
    try:
        return [
            _snapshot_trial(state, metadata) for state, metadata in json.loads(text)["trial_data"]
        ]
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        _warn_once(
            "tune_snapshot",
            f"Tune's snapshot {source} is not in the format ray_pipeline reads ({exc!r}); "
            "restoring without checking the checkpoints it names",
        )
        return None


def _snapshot_trial(state_json: str, metadata_json: str) -> SnapshotTrial:
    state, metadata = json.loads(state_json), json.loads(metadata_json)
    directory, status = state["relative_logdir"], state["status"]
    last_result = metadata["last_result"] or {}
    if not isinstance(directory, str | None) or status not in TUNE_STATUSES:
        raise ValueError(f"a trial with relative_logdir {directory!r} and status {status!r}")
    if not isinstance(last_result, dict):
        raise TypeError(f"last_result is a {type(last_result).__name__}")
    checkpoint = last_result.get("checkpoint_dir_name")
    return SnapshotTrial(directory, status, checkpoint if isinstance(checkpoint, str) else None)


# MLflow ---------------------------------------------------------------------------------------

MLFLOW_EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""The experiment tag MLflow 3's UI reads for an experiment's kind (not among MLflow's
documented system tags). Unguarded: a tag the UI no longer reads is stored and ignored."""


INTERNALS: tuple[Internal, ...] = (
    Internal(
        "mkldnn_supports",
        "torch",
        "torch.ops.mkldnn._is_mkldnn_bf16_supported() / _is_mkldnn_fp16_supported()",
        "precision.py (which precisions a CPU runs)",
        "the probe exists and answers",
        "bf16/fp16 reported unsupported on CPUs (fp32 only), warned once",
    ),
    Internal(
        "cpu_kernel",
        "torch",
        "torch.library.Library('aten', 'IMPL').impl(op, kernel, 'CPU'): replaces a built-in "
        "kernel process-wide; the private Library._destroy() takes it out",
        "dropout_masks.py (the opt-in cpu_dropout_masks: numpy)",
        "Library has impl and _destroy, and the registration succeeds",
        "torch's own kernel, warned once",
    ),
    Internal(
        "median_rule_hook",
        "Ray Tune",
        "MedianStoppingRule._on_insufficient_samples(tune_controller, trial, time), overridden "
        "to continue a trial the rule cannot judge yet",
        "hpo/schedulers.py (hpo.scheduler median)",
        "the method exists with those parameters",
        "Ray's stock rule (pauses such a trial while others wait), warned once",
    ),
    Internal(
        "trial_failures",
        "Ray Tune",
        "Trial.num_failures (a property the DeveloperAPI Trial does not document; it reads the "
        "private _TrainingRunMetadata)",
        "hpo/retries.py (RecordRetries' retry lines)",
        "the attribute is an int",
        "the retry line without its number, warned once",
    ),
    Internal(
        "tune_failures_once",
        "Ray Tune",
        "TuneController._actor_failed(tracked_actor, exception) and "
        "_trial_task_failure(trial, exception), wrapped so that one lost reused trial process "
        "is handled once (reading _actor_to_trial, clearing the trial from _resetting_trials)",
        "hpo/retries.py (reuse_trial_processes; FailuresOnce where Tune's controller runs)",
        "the methods exist with those parameters",
        "reuse_actors off for the round (a fresh process per trial), warned once",
    ),
    Internal(
        "train_checkpoint_key",
        "Ray Train",
        "ray.tune.integration.ray_train.CHECKPOINT_PATH_KEY: the metric TuneReportCallback "
        "puts a worker group's checkpoint path under",
        "hpo/tuning.py (round_results)",
        "the constant exists",
        "'checkpoint_path' (Ray 2.60's), warned once",
    ),
    Internal(
        "checkpoint_loggers",
        "Ray Train",
        "the loggers of ray.train._internal.storage and ray.train.v2._internal.execution.storage",
        "sessions.py (quiet_checkpoints)",
        "the modules exist",
        "those missing are skipped: Ray's per-checkpoint INFO lines show",
    ),
    Internal(
        "tune_snapshot_trials",
        "Ray Tune",
        "the experiment snapshot format (experiment_state-<time>.json: trial_data, each trial's "
        "relative_logdir, status and last_result.checkpoint_dir_name)",
        "hpo/tune_state.py (the checkpoint repair before a round is restored)",
        "the snapshot has that shape",
        "the repair is skipped (Tune restores as it would without it), warned once",
    ),
    Internal(
        "MLFLOW_EXPERIMENT_KIND_TAG",
        "MLflow",
        "the experiment tag mlflow.experimentKind, read by MLflow 3's UI",
        "tracking.py (EXPERIMENT_KIND)",
        "none needed: a tag is data",
        "a tag the UI no longer reads is stored and ignored",
    ),
)
"""Every reach into a dependency's internals: the table docs/architecture.md mirrors."""
