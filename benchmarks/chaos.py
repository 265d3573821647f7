"""A chaos run (issue 35, point 8): the whole pipeline (hpo, benchmark, select, final) on a
two-node local Ray cluster while N kills land at random moments, then the invariants a
fault-tolerant run must keep.

    python benchmarks/chaos.py --kills N --seed S [--json FILE] [--workdir DIR] [--no-baseline]

The cluster is a `ray start --head` (with its dashboard: the state API says which process runs
which task) and a `ray start --address` worker node, 1 CPU each, token auth, each with its own
temp dir (as tests/test_node_loss.py starts them). First a baseline run without kills (its own
outputs root; ``--no-baseline`` skips it), then the chaos run: the driver runs
``python -m ray_pipeline run`` on the smoke experiment (4 one-worker trials x 2 folds x 15
epochs, a benchmark of 2000 iterations per batch size, a 2-worker DDP refit of 6 epochs, and
``resources.max_failures`` = max(3, N): no unit runs out of retries), and a seeded
scheduler (``random.Random(seed)``) plans N kills, kinds drawn in shuffled rounds of:

- ``trial_process``: the process of a running one-worker trial (a RUNNING ``.train`` task of a
  Tune ``ImplicitFunc`` actor, from the state API), SIGKILLed by pid;
- ``ddp_worker``: the rank-1 Ray Train worker of the DDP refit (its pid from the controller's
  worker-group listing, an ALIVE ``RayTrainWorker`` actor in the state API), SIGKILLed;
- ``refit_worker``: the rank-0 worker of the refit (it writes the epoch checkpoints), SIGKILLed;
- ``benchmark_actor``: the ``BenchmarkActor`` measuring now (a RUNNING ``BenchmarkActor.run``
  task), its process SIGKILLed (Ray restarts the actor and runs the measurement again);
- ``worker_node``: the worker node's `ray start` process group SIGKILLed (as a lost spot node);
  once Ray reports the node dead a replacement node is started, so capacity comes back;
- ``driver``: the driver and all it started, SIGKILLed (``tests.processes.kill_started``), then
  the same command again (``run.mode: reuse_if_exists``, the default, continues the run).

Each kill belongs to a stage (worker node and driver: one drawn at random) and fires at a moment
drawn from that stage's progress: after a number of epochs the search reported, after a number
of epochs the refit checkpointed, or seconds into a benchmark measurement; then it waits (with a
deadline that fails the run) for a target of its kind. A kill whose stage is over by then takes
another kind that applies to the current stage (recorded as ``planned``). Only processes of this
run's cluster and drivers are killed (their session ids are checked), never by name.

At the end (the last driver exited 0), checked and written to the JSON: every fold of every
COMPLETE trial trained exactly once (one FINISHED MLflow fold run logging its objective once,
counted by runs, not names, and hpo.json agrees); hpo.json's COMPLETE trials are the Optuna
study's; every trial COMPLETE; the refit's epochs each once; no MLflow run RUNNING; no lease
held (no ``lease.json`` left under the outputs); the exported model loads in
``transformers.pipeline``; every driver that was not killed exited 0; every kill was placed.
Figures: kills by kind, epochs retrained per kill, and the wall-time overhead against the
baseline. Exit 0 when every invariant holds, 1 otherwise. It takes minutes (about 3-4 on 2 idle
cores with the baseline, with ``--kills 3``); run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the tests package: its cluster and run-output helpers

from tests import gpus  # noqa: E402
from tests.processes import (  # noqa: E402
    CLI,
    RAY,
    accepts,
    free_port,
    kill_started,
    ray_node_env,
    start_logged,
)
from tests.run_outputs import (  # noqa: E402
    assert_model_classifies,
    embedded_store,
    mlflow_runs,
    study_states,
)

SMOKE = REPO / "config" / "experiment" / "smoke.yaml"
EXPERIMENT, BACKBONE = "smoke", "tiny-bert"
SAMPLES, FOLDS, EPOCHS = 4, 2, 15
"""The search: trials, folds, epochs per fold (a fold lasts long enough for a kill to land in it:
on 2 idle cores a trial of 2 x 6 epochs ended before the state API had named its process)."""
REFIT_EPOCHS = 6
BENCHMARK_ITERATIONS = 2000
"""Per batch size: a measurement lasts long enough for a kill to land inside it."""
KINDS = ("trial_process", "ddp_worker", "benchmark_actor", "refit_worker", "worker_node", "driver")
STAGES = ("hpo", "benchmark", "final")
"""The stages a kill lands in (selection takes a moment: it counts as the start of final)."""
STAGE_OF: dict[str, str | None] = {
    "trial_process": "hpo",
    "ddp_worker": "final",
    "benchmark_actor": "benchmark",
    "refit_worker": "final",
    "worker_node": None,  # any stage: drawn
    "driver": None,
}
POLL_S = 0.5
TARGET_TIMEOUT_S = 900.0
"""The longest a kill waits for its moment and target (a stuck run fails the chaos run)."""
RUN_TIMEOUT_S = 3600.0
"""The longest one pipeline run (with its restarts) may take."""
DRIVER_RETRIES = 2
"""Restarts of a driver that failed on its own (recorded: an invariant fails)."""
HEALTH_ENV = {
    # The head declares a lost node dead after ~2 s instead of ~15 s (as test_node_loss).
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_failure_threshold": "4",
}
RANK_LINE = re.compile(r"pid=(\d+)\) world_rank=(\d+)")
"""Ray Train's controller lists each worker group it starts: ``(ip=..., pid=P) world_rank=R``."""

T = TypeVar("T")


class ChaosError(RuntimeError):
    """The chaos run itself could not go on (a deadline passed): exit 1, reason in the JSON."""


def until(condition: Callable[[], T | None], what: str, timeout: float) -> T:
    """The first truthy value of ``condition()``; ChaosError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ChaosError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_S)


def say(text: str) -> None:
    print(text, flush=True)


# The cluster ------------------------------------------------------------------------------------


class Cluster:
    """A head (with its dashboard, for the state API) and one worker node at a time, 1 CPU
    each; a killed worker node is replaced by a new one. ``stop`` kills exactly the `ray start`s
    started here and what they started."""

    def __init__(self, temp: Path, env: dict[str, str]) -> None:
        self.temp, self.env = temp, env
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.started: list[subprocess.Popen[bytes]] = []
        self.worker: subprocess.Popen[bytes] | None = None
        self.nodes_started = 0
        self.joining: float | None = None
        """When the worker node that has not joined yet was started."""
        self.joins: list[float] = []
        """Seconds each worker node took to join."""

    def _common(self) -> list[str]:
        gpu = f"--num-gpus={gpus.declared_gpus()}"
        return ["--block", "--disable-usage-stats", "--num-cpus=1", gpu]

    def start(self) -> None:
        head_dir = self.temp / "h"
        head_dir.mkdir()
        argv = [RAY, "start", "--head", f"--port={self.port}", f"--temp-dir={head_dir}"]
        argv += ["--include-dashboard=true", "--dashboard-host=127.0.0.1"]
        argv += [f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}"]
        head = start_logged([*argv, *self._common()], self.temp / "h.log", self.env)
        self.started.append(head)
        until(
            lambda: accepts(self.port) or head.poll() is not None,
            "the head node's GCS port",
            120,
        )
        if head.poll() is not None:
            raise ChaosError(f"the head node exited (its log: {self.temp / 'h.log'})")
        until(lambda: len(self.alive()) == 1, "the head node", 180)
        self.add_worker()

    def add_worker(self, wait: bool = True) -> None:
        """Start a worker node; with ``wait``, wait until the cluster has two alive nodes
        (else ``settled`` tells when it has)."""
        self.nodes_started += 1
        node_dir = self.temp / f"n{self.nodes_started}"
        node_dir.mkdir()
        argv = [RAY, "start", f"--address={self.address}", f"--temp-dir={node_dir}"]
        log = self.temp / f"n{self.nodes_started}.log"
        self.worker = start_logged([*argv, *self._common()], log, self.env)
        self.started.append(self.worker)
        self.joining = time.monotonic()
        if wait:
            self.wait_settled()

    def settled(self) -> bool:
        """Whether the latest worker node has joined (two alive nodes); records how long it
        took to join."""
        if self.joining is None:
            return True
        if len(self.alive()) < 2:
            return False
        self.joins.append(round(time.monotonic() - self.joining, 1))
        self.joining = None
        return True

    def wait_settled(self) -> None:
        log = self.temp / f"n{self.nodes_started}.log"
        until(self.settled, f"worker node {self.nodes_started} to join ({log})", 180)

    def worker_node_id(self) -> str | None:
        found = [n for n in self.alive() if not n.is_head_node]
        return found[0].node_id if found else None

    def kill_worker(self) -> dict[str, Any]:
        """SIGKILL the worker node's process group, wait until Ray reports it dead and start a
        replacement (``settled`` tells when it has joined)."""
        assert self.worker is not None
        node = self.worker_node_id()
        began = time.monotonic()
        os.killpg(self.worker.pid, signal.SIGKILL)  # the node goes, as a spot node would
        self.worker.wait()
        until(lambda: node not in {n.node_id for n in self.alive()}, "the node to be dead", 120)
        dead = time.monotonic() - began
        self.add_worker(wait=False)
        return {"node": node, "dead_after_s": round(dead, 1), "replacement": self.nodes_started}

    def alive(self) -> list[Any]:
        from ray.util.state import list_nodes

        return [n for n in _state(list_nodes, self.address) if n.state == "ALIVE"]

    def ours(self, pid: int) -> bool:
        """Whether ``pid`` runs in the session of a `ray start` started here."""
        return _session(pid) in {p.pid for p in self.started}

    def stop(self) -> None:
        kill_started(self.started)


def _state(list_fn: Callable[..., Any], address: str, **filters: Any) -> list[Any]:
    """A state API listing of the cluster at ``address``; empty while the dashboard does not
    answer (it is busy or starting: the caller asks again)."""
    try:
        return list(list_fn(address=address, raise_on_missing_output=False, timeout=20, **filters))
    except Exception:  # a timeout, a refused connection, a dashboard restarting
        return []


def _session(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[3])  # state ppid pgrp session


# One pipeline run and where it stands ------------------------------------------------------------


def settings(kills: int) -> list[str]:
    """The chaos and baseline runs' overrides of the smoke experiment. ``max_failures`` covers
    every kill hitting the same trial, refit or benchmark (the default 3 would end a unit that
    a long run hits more often, which is no fault of the recovery)."""
    return [
        f"hpo.num_samples={SAMPLES}",
        f"hpo.k_folds={FOLDS}",
        f"hpo.training.epochs={EPOCHS}",
        f"final_training.epochs={REFIT_EPOCHS}",
        f"resources.max_failures={max(3, kills)}",
        f"benchmark.benchmarking.iterations={BENCHMARK_ITERATIONS}",
        "final_training.resources.workers=2",  # a DDP refit, one worker per node
    ]


@dataclass
class DriverRun:
    log: str
    started_s: float
    ended_s: float | None = None
    rc: int | None = None
    killed: bool = False


class Pipeline:
    """``python -m ray_pipeline run`` on the cluster: its outputs, drivers and progress."""

    def __init__(self, name: str, root: Path, cluster: Cluster, kills: int) -> None:
        self.name, self.root, self.cluster = name, root, cluster
        self.outputs = root / name
        self.argv = [*CLI, "run", "--config", str(SMOKE), f"outputs_root={self.outputs}"]
        self.argv += settings(kills)
        self.env = {**cluster.env, "RAY_ADDRESS": cluster.address}
        self.drivers: list[DriverRun] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.t0 = 0.0
        self.stage_times: dict[str, float] = {}

    @property
    def variant(self) -> Path:
        return self.outputs / EXPERIMENT / "hpo" / BACKBONE / f"hpo_{BACKBONE}"

    @property
    def final(self) -> Path:
        return self.outputs / EXPERIMENT / "final" / BACKBONE / f"final_{BACKBONE}"

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> None:
        """Start a driver: the first, or again (once the worker node is back: the run's checks
        plan for the whole cluster)."""
        if not self.drivers:
            self.t0 = time.monotonic()
        self.cluster.wait_settled()
        log = self.root / f"{self.name}-driver-{len(self.drivers) + 1}.log"
        self.process = start_logged(self.argv, log, self.env, cwd=REPO)
        self.drivers.append(DriverRun(str(log), round(self.now(), 1)))

    def kill_driver(self) -> dict[str, Any]:
        assert self.process is not None
        pid = self.process.pid
        kill_started([self.process])
        run = self.drivers[-1]
        run.killed, run.rc, run.ended_s = True, self.process.returncode, round(self.now(), 1)
        self.start()
        return {"pid": pid, "restarted_as": self.process.pid}

    def poll(self) -> str:
        """``running``, ``done`` (the last driver exited 0) or ``failed`` (it exited otherwise:
        recorded, and restarted while retries are left)."""
        assert self.process is not None
        self.watch_stages()
        code = self.process.poll()
        if code is None:
            return "running"
        run = self.drivers[-1]
        if run.rc is None:
            run.rc, run.ended_s = code, round(self.now(), 1)
        if code == 0:
            return "done"
        failed = sum(not d.killed for d in self.drivers if d.rc not in (0, None))
        say(f"{self.name}: driver exited {code} on its own (log: {run.log})")
        if failed > DRIVER_RETRIES:
            return "failed"
        self.start()
        return "running"

    def ready(self) -> bool:
        """Whether the current driver has passed its checks (it prints the resolved config's
        path before the first stage runs): kills wait for it, as a lost node during the checks
        of a rerun makes it exit 2 (the cluster too small for the refit), as it should."""
        try:
            text = Path(self.drivers[-1].log).read_text(errors="replace")
        except OSError:
            return False
        return text.startswith("config: ") or "\nconfig: " in text

    def stage(self) -> str:
        """Where the run is, from its files: hpo until hpo.json, benchmark until the
        benchmark.json, then final (selection included) until metrics.json; then done."""
        if not (self.variant / "hpo.json").is_file():
            return "hpo"
        if not (self.variant / "benchmark.json").is_file():
            return "benchmark"
        if not (self.final / "metrics.json").is_file():
            return "final"
        return "done"

    def watch_stages(self) -> None:
        """When each stage was first seen to start and end (seconds from the first driver)."""
        marks = {
            "hpo_trials": self.variant / "tune",
            "hpo_done": self.variant / "hpo.json",
            "benchmark_done": self.variant / "benchmark.json",
            "selection_done": self.outputs / EXPERIMENT / "selection" / "selection.json",
            "final_done": self.final / "metrics.json",
        }
        for name, path in marks.items():
            if name not in self.stage_times and path.exists():
                self.stage_times[name] = round(self.now(), 1)

    def hpo_progress(self) -> int:
        """Epochs the search has reported (every line of every trial's result.json)."""
        lines = 0
        for path in self.variant.glob("tune/round_*/trial_*/result.json"):
            with contextlib.suppress(OSError):
                lines += path.read_bytes().count(b"\n")
        return lines

    def refit_progress(self) -> int:
        """Epochs the refit has checkpointed."""
        from ray_pipeline.final.worker import epoch_checkpoints, read_state

        try:
            found = epoch_checkpoints(self.final / "checkpoints")
            return len(read_state(found[-1]).epochs) if found else 0
        except (OSError, ValueError):  # a checkpoint deleted or written meanwhile
            return 0

    def worker_group(self) -> tuple[tuple[int, int], dict[int, int]]:
        """The refit's latest worker group, as its controller listed it in the current driver's
        log: (driver, group) numbers, and rank -> pid."""
        try:
            text = Path(self.drivers[-1].log).read_text(errors="replace")
        except OSError:
            return (len(self.drivers), 0), {}
        head = "Started training worker group"
        block = text.rpartition(head)[2] if head in text else ""
        ranks = {int(rank): int(pid) for pid, rank in RANK_LINE.findall(block)}
        return (len(self.drivers), text.count(head)), ranks

    def run_to_end(self, timeout: float = RUN_TIMEOUT_S) -> str:
        """Poll until the run is done or failed for good."""
        deadline = time.monotonic() + timeout
        while (state := self.poll()) == "running":
            if time.monotonic() > deadline:
                raise ChaosError(f"{self.name}: not done after {timeout:g} s")
            time.sleep(POLL_S)
        return state

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            kill_started([self.process])


# Planning and placing the kills ------------------------------------------------------------------


@dataclass
class Planned:
    kind: str
    stage: str
    trigger: float
    """hpo: epochs the search has reported; final: epochs the refit has checkpointed;
    benchmark: seconds into a measurement."""


@dataclass
class Kill:
    number: int
    kind: str
    stage: str
    at_s: float
    """Seconds from the chaos run's first driver start."""
    target: dict[str, Any]
    planned: str | None = None
    """The kind first drawn, when its stage was over and another kind took its place."""
    progress: dict[str, int] = field(default_factory=dict)
    refit_cut: bool = False
    """A worker group of the refit was up when it landed (starting, or training)."""


def _trigger(stage: str, rng: random.Random) -> float:
    if stage == "hpo":
        return rng.randint(1, SAMPLES * FOLDS * EPOCHS - EPOCHS)
    if stage == "final":
        return rng.randint(0, REFIT_EPOCHS - 1)
    return round(rng.uniform(0.0, 1.5), 2)


def plan_kills(kills: int, rng: random.Random) -> list[Planned]:
    """``kills`` kills: kinds drawn in shuffled rounds of all kinds, each given its stage
    (worker node and driver: drawn) and a moment in it, in the order they will come."""
    kinds: list[str] = []
    while len(kinds) < kills:
        block = list(KINDS)
        rng.shuffle(block)
        kinds += block
    planned = []
    for kind in kinds[:kills]:
        stage = STAGE_OF[kind] or rng.choice(STAGES)
        planned.append(Planned(kind, stage, _trigger(stage, rng)))
    return sorted(planned, key=lambda p: (STAGES.index(p.stage), p.trigger))


class Chaos:
    """Places the planned kills in a running pipeline, one after another."""

    def __init__(self, pipeline: Pipeline, rng: random.Random) -> None:
        self.pipeline, self.rng = pipeline, rng
        self.cluster = pipeline.cluster
        self.kills: list[Kill] = []
        self.unplaced: list[Planned] = []
        self.killed_pids: set[int] = set()
        self.last_kill = 0.0
        """When the previous kill was done (monotonic clock)."""
        self.hit_groups: set[tuple[int, int]] = set()
        """The refit's worker groups (``Pipeline.worker_group``) a kill has hit."""
        self.measuring: dict[tuple[str, int], float] = {}
        """(task id, attempt) of each benchmark measurement seen -> when first seen."""

    def run(self, planned: list[Planned]) -> None:
        for number, kill in enumerate(planned, start=1):
            if not self._place(number, kill, len(planned)):
                self.unplaced = planned[number - 1 :]
                say(f"chaos: the run ended before kill {number}; {len(self.unplaced)} unplaced")
                return

    def _place(self, number: int, kill: Planned, total: int) -> bool:
        """Wait for the kill's moment and a target, and kill it; False when the run ended
        first."""
        p = self.pipeline
        planned: str | None = None
        deadline = time.monotonic() + TARGET_TIMEOUT_S
        while True:
            state = p.poll()
            if state != "running":
                return False
            stage = p.stage()
            if stage == "done" or not p.ready():
                time.sleep(POLL_S)  # the driver is exporting and exiting, or checking
                continue
            if STAGES.index(kill.stage) < STAGES.index(stage):  # its stage is over: another kind
                kinds = [k for k in KINDS if STAGE_OF[k] in (stage, None)]
                planned = planned or kill.kind
                kill = Planned(self.rng.choice(kinds), stage, 0.0)
            if kill.stage == stage and self._moment(kill):
                target = self._target(kill.kind)
                if target is not None:
                    break
            if time.monotonic() > deadline:
                raise ChaosError(
                    f"kill {number} ({kill.kind} in {kill.stage}): no moment or target in "
                    f"{TARGET_TIMEOUT_S:g} s"
                )
            time.sleep(POLL_S)
        record = Kill(number, kill.kind, kill.stage, round(p.now(), 1), target, planned)
        record.progress = {"hpo_epochs": p.hpo_progress(), "refit_epochs": p.refit_progress()}
        record.refit_cut = kill.stage == "final" and self._refit_training()
        if record.refit_cut:
            self.hit_groups.add(self.pipeline.worker_group()[0])
        self._execute(record)
        self.kills.append(record)
        self.last_kill = time.monotonic()
        instead = f" (instead of {planned})" if planned else ""
        say(
            f"kill {number}/{total} at {record.at_s:.0f} s: {record.kind}{instead} in "
            f"{record.stage}: {json.dumps(record.target)}"
        )
        return True

    def _moment(self, kill: Planned) -> bool:
        """Whether the kill's moment has come: its stage has got as far as its trigger, and
        has moved on since the previous kill (each kill lands on a run that recovered and went
        on, not on what the previous kill is still tearing down)."""
        p = self.pipeline
        last = self.kills[-1] if self.kills else None
        if kill.stage == "hpo":
            done = p.hpo_progress()
            return done >= kill.trigger and (last is None or done > last.progress["hpo_epochs"])
        if kill.stage == "final":
            done = p.refit_progress()
            if done < kill.trigger:
                return False
            if last is None or last.stage != "final" or done > last.progress["refit_epochs"]:
                return True
            return bool(self._train_workers())  # a worker group no kill has hit yet
        now = time.monotonic()  # benchmark: seconds into a measurement running now
        return any(now - since >= kill.trigger for since in self._measurements().values())

    def _measurements(self) -> dict[tuple[str, int], float]:
        """The benchmark measurements running now -> when each was first seen."""
        from ray.util.state import list_tasks

        running = _state(
            list_tasks,
            self.cluster.address,
            filters=[("name", "=", "BenchmarkActor.run"), ("state", "=", "RUNNING")],
        )
        now = time.monotonic()
        keys = [(t.task_id, t.attempt_number) for t in running]
        for key in keys:
            self.measuring.setdefault(key, now)
        # Not one first seen before the previous kill: that kill may have ended it already.
        return {k: self.measuring[k] for k in keys if self.measuring[k] > self.last_kill}

    def _refit_training(self) -> bool:
        return bool(self._train_workers())

    def _train_workers(self) -> dict[int, int]:
        """Rank -> pid of the refit's current worker group while its workers are alive: not a
        group a kill already hit (Ray Train is tearing it down to start another)."""
        from ray.util.state import list_actors

        group, ranks = self.pipeline.worker_group()
        if group in self.hit_groups or self.killed_pids & set(ranks.values()):
            return {}
        alive = _state(list_actors, self.cluster.address, filters=[("state", "=", "ALIVE")])
        pids = {int(a.pid) for a in alive if a.class_name.split(".")[-1] == "RayTrainWorker"}
        return {r: pid for r, pid in ranks.items() if pid in pids}

    def _target(self, kind: str) -> dict[str, Any] | None:
        """What a kill of ``kind`` would hit now (None: nothing yet)."""
        from ray.util.state import list_actors, list_tasks

        address = self.cluster.address
        if kind == "worker_node":  # once the last one lost has been replaced
            node = self.cluster.worker_node_id() if self.cluster.settled() else None
            return {"node": node} if node else None
        if kind == "driver":
            assert self.pipeline.process is not None
            return {"pid": self.pipeline.process.pid}
        if kind == "trial_process":
            actors = _state(list_actors, address, filters=[("state", "=", "ALIVE")])
            trainables = {a.actor_id for a in actors if a.class_name.endswith("ImplicitFunc")}
            tasks = _state(list_tasks, address, filters=[("state", "=", "RUNNING")])
            found = [
                t
                for t in tasks
                if t.actor_id in trainables and t.name.endswith(".train") and t.worker_pid
            ]
            return self._pick(found, lambda t: self._trial_of(int(t.worker_pid)))
        if kind == "benchmark_actor":
            running = set(self._measurements())
            tasks = _state(
                list_tasks,
                address,
                filters=[("name", "=", "BenchmarkActor.run"), ("state", "=", "RUNNING")],
            )
            found = [t for t in tasks if (t.task_id, t.attempt_number) in running and t.worker_pid]
            return self._pick(found, lambda t: {"task_attempt": t.attempt_number})
        rank = 0 if kind == "refit_worker" else 1
        pid = self._train_workers().get(rank)
        if pid is None or pid in self.killed_pids or not self.cluster.ours(pid):
            return None
        return {"pid": pid, "rank": rank}

    def _pick(
        self, tasks: list[Any], about: Callable[[Any], dict[str, Any]]
    ) -> dict[str, Any] | None:
        found = [
            t
            for t in tasks
            if int(t.worker_pid) not in self.killed_pids and self.cluster.ours(int(t.worker_pid))
        ]
        if not found:
            return None
        task = self.rng.choice(sorted(found, key=lambda t: int(t.worker_pid)))
        return {"pid": int(task.worker_pid), "task": task.name, "node": task.node_id, **about(task)}

    def _trial_of(self, pid: int) -> dict[str, Any]:
        """The last epoch the process ``pid`` reported: its trial and step (a process Tune
        reuses may be on a later trial that has not reported yet; none: nothing reported)."""
        last: tuple[float, str, int] | None = None
        for path in self.pipeline.variant.glob("tune/round_*/trial_*/result.json"):
            with contextlib.suppress(OSError):
                for line in path.read_text().splitlines():
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        result = json.loads(line)
                        if result["pid"] == pid and (last is None or result["timestamp"] > last[0]):
                            last = (result["timestamp"], path.parent.name, result["global_step"])
        if last is None:
            return {"last_reported": None}
        return {"last_reported": {"trial": last[1], "step": last[2]}}

    def _execute(self, kill: Kill) -> None:
        if kill.kind == "worker_node":
            kill.target.update(self.cluster.kill_worker())
        elif kill.kind == "driver":
            kill.target.update(self.pipeline.kill_driver())
        else:
            pid = int(kill.target["pid"])
            self.killed_pids.add(pid)
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile: still counted
                os.kill(pid, signal.SIGKILL)


# The invariants and the figures ------------------------------------------------------------------


def _check(name: str, checks: dict[str, dict[str, Any]], fn: Callable[[], Any]) -> None:
    """Run one check: ``fn`` returns its details, and raises AssertionError when it fails."""
    try:
        checks[name] = {"ok": True, "detail": fn()}
    except AssertionError as exc:
        checks[name] = {"ok": False, "detail": str(exc)[:4000]}
    except Exception as exc:  # a file missing, a store unreadable: the invariant cannot hold
        checks[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:4000]}


def invariants(p: Pipeline, chaos: Chaos, outcome: str) -> dict[str, dict[str, Any]]:
    from mlflow import MlflowClient

    from ray_pipeline.artifacts import read_json
    from ray_pipeline.final.results import FinalMetrics
    from ray_pipeline.hpo.results import HpoResult
    from ray_pipeline.layout_names import LEASE
    from ray_pipeline.lease import holder_alive, read_lease

    checks: dict[str, dict[str, Any]] = {}

    def drivers() -> Any:
        unexpected = [asdict(d) for d in p.drivers if not d.killed and d.rc != 0]
        assert outcome == "done" and not unexpected, f"run {outcome}; drivers failed: {unexpected}"
        return f"{len(p.drivers)} driver(s), {sum(d.killed for d in p.drivers)} killed"

    def placed() -> Any:
        assert not chaos.unplaced, f"unplaced kills: {[asdict(k) for k in chaos.unplaced]}"
        return len(chaos.kills)

    def _holder(path: Path) -> Any:
        record = read_lease(path)
        return None if record is None else (record.describe(), holder_alive(record))

    _check("drivers_exit_0", checks, drivers)
    _check("every_kill_placed", checks, placed)
    if outcome != "done":
        return checks
    uri = embedded_store(p.outputs, EXPERIMENT)

    def folds_once() -> Any:
        hpo = read_json(p.variant / "hpo.json", HpoResult)
        client = MlflowClient(uri)
        runs: dict[tuple[int, int], list[tuple[str, int]]] = {}
        for run in mlflow_runs(uri, EXPERIMENT):
            tags = run.data.tags
            if tags.get("ray_pipeline.kind") != "fold":
                continue
            key = (int(tags["ray_pipeline.trial"]), int(tags["ray_pipeline.fold"]))
            logged = len(client.get_metric_history(run.info.run_id, "objective"))
            runs.setdefault(key, []).append((run.info.status, logged))
        wrong: dict[str, Any] = {}
        for trial in hpo.trials:
            if trial.state != "COMPLETE":
                continue
            if [f.fold for f in trial.folds] != list(range(FOLDS)):
                wrong[f"trial {trial.number} hpo.json folds"] = [f.fold for f in trial.folds]
            for fold in range(FOLDS):
                found = runs.get((trial.number, fold), [])
                if found != [("FINISHED", 1)]:
                    wrong[f"trial {trial.number} fold {fold}"] = found
        assert not wrong, f"fold runs (status, objectives logged) not once each: {wrong}"
        return {f"trial {t} fold {f}": r for (t, f), r in sorted(runs.items())}

    def study_agrees() -> Any:
        hpo = read_json(p.variant / "hpo.json", HpoResult)
        ours = sorted(t.number for t in hpo.trials if t.state == "COMPLETE")
        study = study_states(p.variant / "study.db")
        theirs = sorted(n for n, state in study if state == "COMPLETE")
        assert ours == theirs, f"hpo.json COMPLETE {ours} != study COMPLETE {theirs} ({study})"
        return ours

    def all_complete() -> Any:
        hpo = read_json(p.variant / "hpo.json", HpoResult)
        states = {t.number: t.state for t in hpo.trials}
        assert list(states.values()) == ["COMPLETE"] * SAMPLES, states
        return {t.number: {"failures": len(t.failures), "resumes": t.resumes} for t in hpo.trials}

    def refit_once() -> Any:
        metrics = read_json(p.final / "metrics.json", FinalMetrics)
        epochs = [e.epoch for e in metrics.epochs]
        assert epochs == list(range(REFIT_EPOCHS)), f"refit epochs {epochs}"
        return {
            "failures": len(metrics.failures),
            "resumed_from_epoch": metrics.resumed_from_epoch,
            "attempts": len({e.attempt for e in metrics.epochs}),
        }

    def none_running() -> Any:
        runs = mlflow_runs(uri, EXPERIMENT)
        running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
        assert not running, f"MLflow runs RUNNING: {running}"
        return dict(Counter(r.info.status for r in runs))

    def no_lease() -> Any:
        found = sorted(p.outputs.rglob(f"*{LEASE}*"))
        held = {str(f): _holder(f) for f in found}
        assert not found, f"lease files left (holder, alive): {held}"
        return 0

    def model_loads() -> Any:
        from transformers.utils import logging

        logging.disable_progress_bar()  # a bar per weights file would flood the output
        model = p.final / "model"
        assert_model_classifies(model)
        try:
            assert_model_classifies(model, learned=True)
        except AssertionError as exc:
            return f"loads and classifies; has not learned the probes: {exc}"[:500]
        return "loads, classifies, and has learned the probes"

    _check("folds_trained_once", checks, folds_once)
    _check("hpo_json_is_study_complete", checks, study_agrees)
    _check("every_trial_complete", checks, all_complete)
    _check("refit_epochs_once", checks, refit_once)
    _check("no_mlflow_run_running", checks, none_running)
    _check("no_lease_held", checks, no_lease)
    _check("model_loads_in_pipeline", checks, model_loads)
    return checks


def epoch_figures(p: Pipeline, kills: list[Kill], logs: list[Path]) -> dict[str, Any]:
    """Epochs trained in all (begun, counting again each one begun again) against the distinct
    epochs the run needed; an epoch in flight when its process was lost counts whole.

    The search: a trial's result.json has a line per epoch it reported, each attempt (process)
    with its own ``pid``; an epoch reported again was trained again, and an attempt cut off
    before its trial ended also lost the epoch it was in. The refit: its rank-0 process prints
    each epoch it finishes (and a step line early in an attempt's first epoch) in its Ray worker
    log (``logs``: the chaos run's); a process that stopped before the last epoch lost
    the one after its last finished epoch."""
    hpo = _search_epochs(p)
    refit = _refit_epochs(logs)
    distinct = SAMPLES * FOLDS * EPOCHS + REFIT_EPOCHS
    trained = hpo["trained"] + refit["trained"]
    retrained = trained - distinct
    return {
        "distinct": distinct,
        "trained": trained,
        "retrained": retrained,
        "per_kill": round(retrained / len(kills), 2) if kills else None,
        "search": hpo,
        "refit": refit,
        "kills_on_a_live_refit_group": sum(k.refit_cut for k in kills),
    }


def _search_epochs(p: Pipeline) -> dict[str, int]:
    reported = redone = cut = rereported = torn = 0
    for path in sorted(p.variant.glob("tune/round_*/trial_*/result.json")):
        attempts: list[list[dict[str, Any]]] = []
        for line in path.read_text().splitlines():
            try:
                result = json.loads(line)
            except ValueError:  # torn by a kill
                torn += 1
                continue
            if not attempts or attempts[-1][-1].get("pid") != result.get("pid"):
                attempts.append([])
            attempts[-1].append(result)
        seen: set[int] = set()
        for number, attempt in enumerate(attempts):
            for result in attempt:
                step = int(result["global_step"])
                folds = len(json.loads(result["fold_state"])["folds"])
                if step in seen and folds == FOLDS and step == FOLDS * EPOCHS:
                    rereported += 1  # a finished trial reporting again: nothing trained
                    continue
                redone += step in seen
                seen.add(step)
                reported += 1
            if number < len(attempts) - 1 and int(attempt[-1]["global_step"]) < FOLDS * EPOCHS:
                cut += 1
    return {
        "trained": reported + cut,
        "reported": reported,
        "reported_again": redone,
        "cut_in_flight": cut,
        "reported_again_without_training": rereported,
        "torn_result_lines": torn,
    }


REFIT_LINE = re.compile(rf"final final_{re.escape(BACKBONE)}: epoch (\d+)/\d+ (step|train_loss)")


def _refit_epochs(logs: list[Path]) -> dict[str, int]:
    trained = processes = cut = 0
    for log in logs:
        try:
            found = REFIT_LINE.findall(log.read_text(errors="replace"))
        except OSError:
            continue
        if not found:
            continue
        finished = {int(e) for e, kind in found if kind == "train_loss"}
        begun = finished | {int(e) for e, kind in found if kind == "step"}
        if finished and max(finished) < REFIT_EPOCHS and max(finished) + 1 not in begun:
            begun.add(max(finished) + 1)  # stopped before its last epoch: lost the next one
        cut += max(finished, default=0) < REFIT_EPOCHS
        trained += len(begun)
        processes += 1
    return {"trained": trained, "rank0_processes": processes, "cut": cut}


def worker_logs(temp: Path) -> set[Path]:
    """The stdout files of the cluster's Ray worker processes (every node's, lost ones' too)."""
    return {log.resolve() for log in temp.glob("*/session_*/logs/worker-*.out")}


def recoveries(p: Pipeline) -> dict[str, Any]:
    """What the run recovered from, as it recorded it: the kills that cut work short."""
    from ray_pipeline.artifacts import read_json
    from ray_pipeline.final.results import FinalMetrics
    from ray_pipeline.hpo.results import HpoResult

    trials = read_json(p.variant / "hpo.json", HpoResult).trials
    metrics = read_json(p.final / "metrics.json", FinalMetrics)
    return {
        "trial_failures": sum(len(t.failures) for t in trials),
        "trial_resumes": [r for t in trials for r in t.resumes],
        "refit_failures": len(metrics.failures),
        "refit_resumed_from_epoch": metrics.resumed_from_epoch,
        "driver_runs": len(p.drivers),
        "worker_node_joins_s": p.cluster.joins,  # the first node's, and replacements seen
    }


# The command -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=3, help="how many kills (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill plan (default 0)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="outputs and driver logs here (default: a temporary dir, removed unless it fails)",
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the run without kills (no overhead)"
    )
    args = parser.parse_args(argv)
    gpus.hide()  # CPU only, as the tests: nodes declare tests/gpus.py's GPUs (none)
    env = {**ray_node_env(secrets.token_hex(16)), **HEALTH_ENV}
    os.environ.update({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})  # state API
    os.environ.pop("RAY_ADDRESS", None)
    temp = Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp"))  # short: Ray's socket paths
    work = args.workdir or temp / "work"
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    planned = plan_kills(args.kills, rng)
    report: dict[str, Any] = {
        "kills_asked": args.kills,
        "seed": args.seed,
        "settings": settings(args.kills),
        "plan": [asdict(k) for k in planned],
        "workdir": str(work),
        "ray_temp": str(temp),
    }
    say(f"chaos: {args.kills} kill(s), seed {args.seed}; outputs and logs in {work}")
    say("chaos: plan " + ", ".join(f"{k.kind}@{k.stage}:{k.trigger:g}" for k in planned))
    cluster = Cluster(temp, env)
    pipelines: list[Pipeline] = []
    ok = False
    try:
        began = time.monotonic()
        cluster.start()
        report["cluster_start_s"] = round(time.monotonic() - began, 1)
        say(f"chaos: cluster up in {report['cluster_start_s']:.0f} s at {cluster.address}")
        if not args.no_baseline:
            baseline = Pipeline("baseline", work, cluster, args.kills)
            pipelines.append(baseline)
            baseline.start()
            outcome = baseline.run_to_end()
            wall = baseline.drivers[-1].ended_s
            report["baseline"] = {
                "outcome": outcome,
                "wall_s": wall,
                "stages": baseline.stage_times,
            }
            say(f"baseline: {outcome} in {wall} s; stages {baseline.stage_times}")
            if outcome != "done":
                raise ChaosError(f"the baseline run failed: {baseline.drivers[-1].log}")
        before = worker_logs(temp)  # the baseline's
        p = Pipeline("chaos", work, cluster, args.kills)
        pipelines.append(p)
        chaos = Chaos(p, rng)
        p.start()
        chaos.run(planned)
        outcome = p.run_to_end()
        wall = p.drivers[-1].ended_s
        say(f"chaos: {outcome} in {wall} s; stages {p.stage_times}")
        report["chaos"] = {
            "outcome": outcome,
            "wall_s": wall,
            "stages": p.stage_times,
            "drivers": [asdict(d) for d in p.drivers],
        }
        report["kills"] = [asdict(k) for k in chaos.kills]
        report["kills_by_kind"] = dict(Counter(k.kind for k in chaos.kills))
        report["invariants"] = invariants(p, chaos, outcome)
        if outcome == "done":
            logs = sorted(worker_logs(temp) - before)
            report["epochs"] = epoch_figures(p, chaos.kills, logs)
            with contextlib.suppress(Exception):  # figures only: the invariants said what broke
                report["recoveries"] = recoveries(p)
        if "baseline" in report and wall:
            base = report["baseline"]["wall_s"]
            report["overhead"] = {
                "ratio": round(wall / base, 2),
                "extra_s": round(wall - base, 1),
                "per_kill_s": round((wall - base) / max(len(chaos.kills), 1), 1),
            }
        ok = all(c["ok"] for c in report["invariants"].values())
    except ChaosError as exc:
        report["error"] = str(exc)
        say(f"chaos: {exc}")
    finally:
        for pipeline in pipelines:
            pipeline.stop()
        cluster.stop()
    report["ok"] = ok
    _summary(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if ok:  # Ray's temp dirs (and the work dir, unless one was given)
        shutil.rmtree(temp, ignore_errors=True)
    else:
        say(f"chaos: kept {temp} (Ray's logs) and {work}")
    return 0 if ok else 1


def _summary(report: dict[str, Any]) -> None:
    say(f"kills by kind: {report.get('kills_by_kind')}")
    for name, check in report.get("invariants", {}).items():
        mark = "ok" if check["ok"] else "FAILED"
        say(f"  {name}: {mark}" + ("" if check["ok"] else f": {check['detail']}"))
    if "epochs" in report:
        e = report["epochs"]
        search, refit = e["search"], e["refit"]
        say(
            f"epochs: {e['trained']} trained for {e['distinct']} distinct: {e['retrained']} "
            f"retrained, {e['per_kill']} per kill (search: {search['reported_again']} reported "
            f"again, {search['cut_in_flight']} cut in flight; refit: {refit['cut']} of "
            f"{refit['rank0_processes']} attempts cut)"
        )
    if "recoveries" in report:
        say(f"recovered from: {report['recoveries']}")
    if "overhead" in report:
        o = report["overhead"]
        say(
            f"wall time: {report['chaos']['wall_s']} s vs {report['baseline']['wall_s']} s "
            f"without kills: {o['ratio']}x, {o['per_kill_s']} s per kill"
        )
    say("chaos: every invariant holds" if report["ok"] else "chaos: FAILED")


if __name__ == "__main__":
    sys.exit(main())
