"""One writer per variant: a lease file (``<variant>/lease.json``) held by the run working on
it, with its owner, host, pid and a heartbeat.

A run takes the lease before it creates, resumes, tops up or reuses a variant, and gives it
back when its stage ends. A second run that finds the lease held exits 2 naming the holder;
a lease whose holder is gone (its pid is dead on this host, or its heartbeat is older than
``STALE_AFTER_S``: a holder on another host that stopped) is taken over, with a line that says
so. Taking over is race-free on one filesystem: the stale file is renamed aside (only one
taker's rename succeeds, and a taker that moved a lease other than the stale one it judged puts
it back) and the new lease is linked into place (``link`` fails when the name exists).

A pid is checked only on the machine that wrote it: the same boot and pid namespace
(containers that share a host name do not share pids), else the heartbeat decides. A lease
this process holds is its own (a stage's check does not refuse it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ray_pipeline.artifacts import read_json, write_json
from ray_pipeline.errors import ConfigError, PipelineError

HEARTBEAT_S = 30.0
"""How often a holder refreshes its heartbeat."""
STALE_AFTER_S = 300.0
"""A lease whose heartbeat is older than this is taken over (a holder that stopped on
another host, where its pid cannot be checked)."""


class LeaseRecord(BaseModel):
    """Contents of ``lease.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    owner: str
    host: str
    pid: int
    since: str
    heartbeat: str
    machine: str = ""
    """This boot of this machine and pid namespace (``_machine``): where ``pid`` means
    something."""

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.since}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _machine() -> str:
    """This boot of this machine and this pid namespace, where a pid names one process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return socket.gethostname()
    return f"{boot}:{namespace}"


def holder_alive(record: LeaseRecord, now: datetime | None = None) -> bool:
    """Whether another run holds the lease and may still be working: not this process (its
    leases are its own), its pid alive where that pid can be checked (this machine and pid
    namespace), else a heartbeat younger than ``STALE_AFTER_S``."""
    if record.pid == os.getpid() and record.machine == _machine():
        return False
    if record.machine != _machine():
        age = ((now or _now()) - datetime.fromisoformat(record.heartbeat)).total_seconds()
        return age <= STALE_AFTER_S
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_identity() -> str:
    """This process, as ``<machine>/<pid>`` (``_machine``): what ``process_gone`` checks."""
    return f"{_machine()}/{os.getpid()}"


def process_gone(identity: str) -> bool:
    """Whether the process ``process_identity`` named is known to have ended: on this machine
    and pid namespace, its pid is dead. Elsewhere (or unreadable) it is not known: False."""
    machine, _, pid = identity.rpartition("/")
    if machine != _machine() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def read_lease(path: Path) -> LeaseRecord | None:
    """The lease at ``path``, if there is one (None also for a torn or unreadable one)."""
    try:
        return read_json(path, LeaseRecord)
    except (OSError, PipelineError):
        return None


class Lease:
    """A held lease: refreshed in the background until ``release``."""

    def __init__(self, path: Path, record: LeaseRecord) -> None:
        self.path, self.record = path, record
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._refresh, name="lease-heartbeat", daemon=True)
        self._beat.start()

    def _refresh(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._lock:
                if self._stop.is_set():
                    return
                current = read_lease(self.path)
                if current is None or current.owner != self.record.owner:
                    return  # taken over (or removed): not ours any more
                self.record = self.record.model_copy(update={"heartbeat": _stamp(_now())})
                with contextlib.suppress(OSError):  # a full or flaky disk: try again next beat
                    write_json(self.path, self.record)

    def release(self) -> None:
        """Give the lease back (the heartbeat stopped first: it never writes after this)."""
        with self._lock:
            self._stop.set()
            current = read_lease(self.path)
            if current is not None and current.owner == self.record.owner:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
        self._beat.join(timeout=HEARTBEAT_S)


def new_record() -> LeaseRecord:
    """A lease for this process, from now."""
    now = _stamp(_now())
    return LeaseRecord(
        owner=uuid.uuid4().hex,
        host=socket.gethostname(),
        pid=os.getpid(),
        since=now,
        heartbeat=now,
        machine=_machine(),
    )


def acquire(path: Path, label: str) -> Lease:
    """Take the lease at ``path`` for the variant ``label``; ConfigError (exit 2) naming the
    holder when another live run holds it."""
    record = new_record()
    for _ in range(3):
        if _create(path, record):
            return Lease(path, record)
        held = read_lease(path)
        if (held is not None and holder_alive(held)) or (held is None and _young(path)):
            holder = held.describe() if held is not None else "its lease is unreadable"
            raise ConfigError.at(
                label,
                f"another run is working on it ({holder}, lease {path}); wait for it to end, "
                "or stop it; a lease whose holder is gone is taken over",
            )
        aside = path.with_name(f".{path.name}.{record.owner}")
        try:
            os.rename(path, aside)  # only one taker's rename succeeds
        except FileNotFoundError:
            continue
        moved = read_lease(aside)
        if (moved.owner if moved else None) != (held.owner if held else None):
            # Another taker replaced the stale lease meanwhile: that one is live, put it back.
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
            aside.unlink(missing_ok=True)
            continue
        aside.unlink(missing_ok=True)
        gone = held.describe() if held is not None else "an unreadable lease"
        print(f"{label}: taking over the lease of a run that is gone ({gone})")
    raise ConfigError.at(label, f"could not take the lease {path}: other runs keep taking it")


@contextlib.contextmanager
def holding(leases: list[tuple[Path, str]]) -> Iterator[None]:
    """Hold every lease of ``leases`` (a lease file and its variant's label) for the block, or
    none: ConfigError (``acquire``) at the first that another live run holds, after giving
    back those taken."""
    held: list[Lease] = []
    try:
        for path, label in leases:
            held.append(acquire(path, label))
        yield
    finally:
        for lease in reversed(held):
            lease.release()


def _young(path: Path) -> bool:
    """Whether the file at ``path`` (an unreadable lease) was written within
    ``STALE_AFTER_S``: it may be a live holder's, caught mid-write on a flaky filesystem."""
    try:
        age = _now().timestamp() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    return age <= STALE_AFTER_S


def _create(path: Path, record: LeaseRecord) -> bool:
    """Create the lease file with ``record`` if none exists, whole or not at all: written
    aside, then hard-linked into place (``link`` fails when the name exists)."""
    aside = path.with_name(f".{path.name}.{record.owner}.new")
    aside.write_text(record.model_dump_json(indent=2) + "\n", encoding="utf-8")
    try:
        os.link(aside, path)
    except FileExistsError:
        return False
    finally:
        aside.unlink(missing_ok=True)
    return True
