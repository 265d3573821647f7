"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`),
the smoke pipeline submitted with `ray job submit`, its study in Optuna's journal storage (as
docs/cluster.md advises for shared storage), stopped with `ray job stop` mid-HPO and
resubmitted with resume_if_incomplete; the dashboard API and the metrics endpoints checked.
The worker node runs in a mount namespace of its own with a tmpfs over one directory, so that
an outputs path there is not shared storage: the job exits 2 before it writes anything."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.hpo.results import HpoResult
from tests.conftest import REPO
from tests.processes import RAY, free_port, kill_started, ray_node_env, start_logged
from tests.run_outputs import study_states
from tests.waits import poll_until, showing_log, wait_for

pytestmark = pytest.mark.slow


TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
"""The statuses a Ray job ends in."""


@dataclass(frozen=True)
class TwoNodes:
    env: dict[str, str]
    dashboard: str
    token: str
    metrics_ports: tuple[int, int]
    unshared: Path
    """A directory that the worker node sees as an empty tmpfs of its own."""

    def job(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        argv = [RAY, "job", *args[:1], "--address", self.dashboard, *args[1:]]
        return subprocess.run(
            argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def api(self, path: str) -> Any:
        request = urllib.request.Request(
            f"{self.dashboard}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def status(self, submission: str) -> str:
        return str(self.api(f"/api/jobs/{submission}")["status"])

    def metric_names(self) -> set[str]:
        names = set()
        for port in self.metrics_ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            names |= {line.split("{")[0] for line in text.splitlines() if "pipeline_" in line}
        return {n for n in names if n.startswith("ray_pipeline_")}


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    token = secrets.token_hex(16)
    env = ray_node_env(token)
    gcs, dash, m1, m2 = (free_port() for _ in range(4))
    # Each node has its own temp dir: nothing is left in /tmp/ray for a later ray.init() to
    # find, and two nodes on one machine do not delete each other's runtime_env files. One CPU
    # per node: the smoke search's two concurrent trials land on both nodes.
    head_dir, node_dir = tmp_path_factory.mktemp("head"), tmp_path_factory.mktemp("node2")
    unshared = tmp_path_factory.mktemp("unshared")
    head = [RAY, "start", "--head", "--block", f"--port={gcs}", "--num-cpus=1"]
    head += [
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--metrics-export-port={m1}",
    ]
    # The worker node: in a private mount namespace, a tmpfs over `unshared`, then (exec, the
    # same pid) `ray start`.
    mount = 'mount -t tmpfs tmpfs "$0" && exec "$@"'
    worker = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(unshared)]
    worker += [RAY, "start", "--block", f"--address=127.0.0.1:{gcs}", "--num-cpus=1"]
    worker += [f"--metrics-export-port={m2}"]
    nodes = TwoNodes(env, f"http://127.0.0.1:{dash}", token, (m1, m2), unshared)
    started: list[subprocess.Popen[bytes]] = []
    try:
        for argv, temp in ((head, head_dir), (worker, node_dir)):
            argv += [f"--temp-dir={temp}", "--disable-usage-stats"]
            _start_node(nodes, argv, temp / "start.log", started)
        yield nodes
    finally:
        kill_started(started)


def _start_node(
    nodes: TwoNodes, argv: list[str], log: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """Start a `ray start --block` node (recorded in ``started`` at once) and wait until the
    dashboard lists it alive."""
    process = start_logged(argv, log, nodes.env)
    started.append(process)
    count = len(started)
    with showing_log(log):
        wait_for(
            lambda: _alive_nodes(nodes) >= count,
            f"Ray node {count} to join the cluster",
            timeout=120,
            still_running=lambda: process.poll() is None,
        )


def _alive_nodes(nodes: TwoNodes) -> int:
    """How many nodes the dashboard lists alive; 0 while it does not answer yet."""
    try:
        listing = nodes.api("/api/v0/nodes?limit=10&detail=false")
    except urllib.error.HTTPError as exc:
        if exc.code in (502, 503, 504):  # up, its backends not yet
            return 0
        raise
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):  # not listening yet
            return 0
        raise
    return sum(n["state"] == "ALIVE" for n in listing["data"]["result"]["result"])


def _complete(study: Path) -> int:
    return sum(state == "COMPLETE" for _, state in study_states(study))


def _submit(two_nodes: TwoNodes, submission: str, entrypoint: list[str]) -> None:
    """`ray job submit --no-wait` from the repository; tried again while the head node's job
    agent is not up yet (the dashboard answers "No available agent" until it is)."""

    def submitted() -> bool:
        args = ["--working-dir", ".", "--no-wait", "--submission-id", submission, *entrypoint]
        done = two_nodes.job("submit", *args)
        if done.returncode == 0:
            return True
        assert "No available agent to submit job" in done.stderr, done.stderr[-3000:]
        return False

    poll_until(submitted, f"the cluster to accept job {submission!r}", timeout=180, interval=1)


def _wait_until_ended(two_nodes: TwoNodes, submission: str, seen: set[str], timeout: float) -> str:
    """The job's final status, polled through the dashboard API; metric names are collected
    meanwhile."""

    def ended() -> str | None:
        seen.update(two_nodes.metric_names())
        status = two_nodes.status(submission)
        return status if status in TERMINAL else None

    return poll_until(ended, f"job {submission!r} to end", timeout, interval=1)


SMOKE_JOB = ["--", "python", "-m", "ray_pipeline", "run"]
SMOKE_JOB += ["--config", "config/experiment/smoke.yaml"]
"""The entrypoint of a job that runs the whole smoke pipeline."""


def test_outputs_a_node_cannot_see_stop_the_job_with_exit_2_and_nothing_written(
    two_nodes: TwoNodes,
) -> None:
    outputs = two_nodes.unshared / "outputs"
    _submit(two_nodes, "blind", [*SMOKE_JOB, f"outputs_root={outputs}"])
    assert _wait_until_ended(two_nodes, "blind", set(), 300) == "FAILED"
    logs = two_nodes.job("logs", "blind").stdout
    assert f"error: outputs_root: {outputs} is not shared storage: 1 of 2 nodes cannot" in logs
    assert "exit code 2" in two_nodes.api("/api/jobs/blind")["message"]
    assert list(two_nodes.unshared.iterdir()) == []  # no outputs, the probe file removed


def test_job_stopped_mid_hpo_then_resumed_on_two_nodes(two_nodes: TwoNodes, tmp_path: Path) -> None:
    outputs = tmp_path / "shared"
    root = outputs / "smoke"
    variant = root / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    study = variant / "study.journal"
    # Trials long enough (12 epochs per fold, ~8 s a trial) for the stop to land mid-search.
    smoke = [*SMOKE_JOB, f"outputs_root={outputs}", "hpo.training.epochs=12"]
    smoke.append("hpo.checkpoint.storage_backend=journal")
    clock = time.monotonic()

    # Submit, stop with `ray job stop` once a trial has finished.
    _submit(two_nodes, "cut", smoke)
    seen: set[str] = set()

    def a_trial_complete() -> bool:
        seen.update(two_nodes.metric_names())
        return _complete(study) >= 1

    poll_until(
        a_trial_complete,
        "job 'cut' to complete a first trial",
        timeout=300,
        still_running=lambda: two_nodes.status("cut") not in TERMINAL,
        interval=1,
    )
    stop = two_nodes.job("stop", "cut", timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert _wait_until_ended(two_nodes, "cut", seen, 60) == "STOPPED"
    assert _complete(study) < 3
    assert json.loads((variant / "variant.json").read_text())["status"] == "failed"
    print(f"stopped after {time.monotonic() - clock:.0f} s")

    # Resubmit with resume_if_incomplete: the whole pipeline finishes, no trial runs twice.
    # (Final training refits for 1 epoch: the trial's 12 would prove nothing more here.)
    resume = [*smoke, "hpo.run.mode=resume_if_incomplete", "final_training.epochs=1"]
    _submit(two_nodes, "resumed", resume)
    status = _wait_until_ended(two_nodes, "resumed", seen, 600)
    assert status == "SUCCEEDED", two_nodes.job("logs", "resumed").stdout[-3000:]
    print(f"resumed run done after {time.monotonic() - clock:.0f} s")
    logs = two_nodes.job("logs", "resumed").stdout
    assert "ray: 2 nodes share" in logs and "resuming hpo_tiny-bert" in logs
    assert "prefer hpo.checkpoint.storage_backend=journal" not in logs
    assert not (variant / "study.db").exists()
    states = [state for _, state in study_states(study)]
    assert states.count("COMPLETE") == 3 and "RUNNING" not in states
    hpo = read_json(variant / "hpo.json", HpoResult)
    assert len([t for t in hpo.trials if t.state == "COMPLETE"]) == 3
    nodes = {f.node for t in hpo.trials for f in t.folds}
    assert len(nodes) == 2, nodes  # trials trained on both nodes
    for artifact in (
        "hpo/tiny-bert/hpo_tiny-bert/benchmark.json",
        "hpo/tiny-bert/hpo_tiny-bert/tune/round_1",
        "selection/selection.json",
        "final/tiny-bert/final_tiny-bert/model/config.json",
        "final/tiny-bert/final_tiny-bert/checkpoints",
        "mlflow.db",
    ):
        assert (root / artifact).exists(), artifact  # all in the shared outputs path

    jobs = two_nodes.api("/api/jobs/")
    statuses = {(j["submission_id"], j["status"]) for j in jobs}
    assert {("cut", "STOPPED"), ("resumed", "SUCCEEDED")} <= statuses
    actors = two_nodes.api("/api/v0/actors?limit=500&detail=false")["data"]["result"]["result"]
    names = {(a["class_name"], a.get("name") or "") for a in actors}
    assert any(c == "BenchmarkActor" and n.startswith("benchmark-smoke-") for c, n in names)
    assert {"TrainController", "RayTrainWorker"} <= {c for c, _ in names}
    assert {
        "ray_pipeline_trials_total",
        "ray_pipeline_fold_seconds_bucket",
        "ray_pipeline_best_objective",
        "ray_pipeline_benchmark_p95_ms",
    } <= seen, seen
