"""Waiting on a condition in tests: poll until it holds, fail loudly at the deadline with what
was awaited (never fall through), and stop early when the work being watched has ended."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | None],
    what: str,
    timeout: float,
    still_running: Callable[[], bool] | None = None,
) -> T:
    """The first truthy value of ``condition()``; a test failure naming ``what`` when the
    deadline passes or ``still_running()`` turns false first."""
    return poll_until(condition, what, timeout, still_running, interval=0.05)


def poll_until(
    condition: Callable[[], T | None],
    what: str,
    timeout: float,
    still_running: Callable[[], bool] | None = None,
    *,
    interval: float,
) -> T:
    """``wait_for`` that asks every ``interval`` seconds: for a condition that costs requests
    to a busy service, or that collects something along the way."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if still_running is not None and not still_running():
            pytest.fail(f"the run ended while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def showing_log(log: Path, chars: int = 3000) -> Iterator[None]:
    """Append the end of ``log`` to a test failure raised inside the block (a wait that gave
    up, say), so that the report says why."""
    try:
        yield
    except pytest.fail.Exception as exc:
        message = exc.msg
    else:
        return
    try:
        tail = log.read_text(errors="replace")[-chars:]
    except OSError as error:
        tail = f"(unreadable: {error})"
    failure = f"{message}\n--- end of {log} ---\n{tail}"
    raise pytest.fail.Exception(failure, pytrace=False) from None  # the same failure, longer


class InThread:
    """A call running in a background thread (the test keeps the main thread to watch it)."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._result: list[Any] = []
        self._error: list[BaseException] = []

        def target() -> None:
            try:
                self._result.append(fn(*args))
            except BaseException as exc:  # handed to the test by result()
                self._error.append(exc)

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self, timeout: float) -> Any:
        """The call's return value; fails the test if it raised or is still running."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            pytest.fail(f"still running after {timeout:g} s")
        if self._error:
            raise self._error[0]
        return self._result[0]
