"""Surviving lost workers, actors and nodes: Ray Train's failure settings, and the failure log
that tells the console, the result files and MLflow which attempts failed and why.

``resources.max_failures`` is the one knob: Ray Tune retries a trial (a DDP trial's lost
worker fails the trial), Ray Train restarts final training's worker group and Ray restarts a
benchmark actor up to that many times. Every retry resumes
from the last checkpoint that was reported, so finished folds and epochs are never trained
again. Each failure seen is appended to ``failures.jsonl`` in the variant's directory (one
JSON line per failure, written by whichever process saw it).
"""

from __future__ import annotations

import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from ray_pipeline.artifacts import Record


class Failure(Record):
    """One failed attempt that was retried (or was the last one)."""

    trial: int | None
    """The HPO trial number (None: final training)."""
    source: Literal["tune", "train", "task"]
    """Who saw it: Ray Tune (the trial's process or node), Ray Train (a worker group) or the
    driver of a Ray task (final training on one worker)."""
    cause: str
    """The error's first line."""
    at: str


def cause_of(error: BaseException | str) -> str:
    """A one-line cause: the exception's type and the first line of its message."""
    if isinstance(error, BaseException):
        text = str(error).strip().splitlines()
        first = next((line for line in text if line.strip()), "")
        return f"{type(error).__name__}: {first}"[:300]
    line = (error.strip().splitlines() or [""])[0]
    sentence = line.split(". ")[0]  # Ray's messages go on for several sentences
    return (sentence if len(line) > 120 else line)[:300]


def last_tune_error(error_file: str | None) -> str:
    """The first line of a Tune trial's latest error (Tune appends each to its error file)."""
    if error_file is None or not Path(error_file).is_file():
        return "unknown cause"
    text = Path(error_file).read_text(encoding="utf-8", errors="replace")
    lines = [line.strip() for line in text.split("Failure # ")[-1].splitlines()[1:]]
    lines = [line for line in lines if line]
    raised = [line for line in lines if line.split(":")[0].endswith(("Error", "Exception"))]
    return cause_of((raised or lines or ["unknown cause"])[-1 if raised else 0])


def record_failure(
    log: Path, trial: int | None, source: Literal["tune", "train", "task"], cause: str
) -> None:
    """Append one failure to ``log``: one ``write`` of one line to a file opened with O_APPEND,
    so the line is whole or absent, whichever process writes it. A line that a killed writer
    left torn (no newline) is ended first, so it spoils only itself."""
    failure = Failure(
        trial=trial,
        source=source,
        cause=cause,
        at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    line = (failure.model_dump_json() + "\n").encode("utf-8")
    descriptor = os.open(log, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if _ends_torn(descriptor):
            line = b"\n" + line
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


def _ends_torn(descriptor: int) -> bool:
    """The file ends inside a line (its last byte is not a newline)."""
    size = os.fstat(descriptor).st_size
    return size > 0 and os.pread(descriptor, 1, size - 1) != b"\n"


def read_failures(log: Path) -> list[Failure]:
    """Every failure recorded in ``log`` (none when it does not exist). A line that does not
    parse (torn by a writer that was killed, or damaged) is skipped with a warning."""
    if not log.is_file():
        return []
    failures: list[Failure] = []
    text = log.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            failures.append(Failure.model_validate_json(line))
        except ValueError:
            warnings.warn(
                f"{log}: line {number} is not a failure record (torn?); skipped",
                RuntimeWarning,
                stacklevel=2,
            )
    return failures


def failures_by_trial(log: Path) -> dict[int, list[str]]:
    """The failures recorded in ``log``, ``<source>: <cause>``, by trial number (-1: none)."""
    out: dict[int, list[str]] = {}
    for failure in read_failures(log):
        trial = failure.trial if failure.trial is not None else -1
        out.setdefault(trial, []).append(f"{failure.source}: {failure.cause}")
    return out


def train_failure_config(max_failures: int) -> Any:
    """Ray Train's FailureConfig: restart a lost worker group up to ``max_failures`` times.

    The controller limit is bounded too: Ray's default (-1) reschedules a worker group that
    can never start forever."""
    from ray.train.v2.api.config import FailureConfig

    return FailureConfig(max_failures=max_failures, controller_failure_limit=max_failures)


def train_failure_callback(log: Path | None, trial: int | None, label: str, then: str) -> Any:
    """A Ray Train callback that prints (``label: ... failed (cause); then``) and records each
    worker-group failure in ``log`` (None: prints only): once, with the cause of every rank
    that raised (a lost rank 1 also fails rank 0's all-reduce: one failure, not two)."""
    from ray.train.v2.api.callback import UserCallback

    class _RecordFailures(UserCallback):
        def after_exception(self, run_context: Any, worker_exceptions: dict[int, Any]) -> None:
            causes = [
                f"rank {rank}: {cause_of(error)}"
                for rank, error in sorted(worker_exceptions.items())
            ]
            cause = "; ".join(causes)
            print(f"{label}: worker group failed ({cause}); {then}")
            if log is not None:
                record_failure(log, trial, "train", cause)

    return _RecordFailures()
