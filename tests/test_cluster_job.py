"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`),
the smoke pipeline submitted with `ray job submit`, stopped with `ray job stop` mid-HPO and
resubmitted with resume_if_incomplete; the dashboard API and the metrics endpoints checked."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.hpo.results import HpoResult
from tests.conftest import REPO
from tests.processes import RAY, free_port, ray_node_env, start_logged
from tests.run_outputs import study_states

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class TwoNodes:
    env: dict[str, str]
    dashboard: str
    token: str
    metrics_ports: tuple[int, int]

    def job(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        argv = [RAY, "job", *args[:1], "--address", self.dashboard, *args[1:]]
        return subprocess.run(
            argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def api(self, path: str) -> object:
        request = urllib.request.Request(
            f"{self.dashboard}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def metric_names(self) -> set[str]:
        names = set()
        for port in self.metrics_ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            names |= {line.split("{")[0] for line in text.splitlines() if "pipeline_" in line}
        return {n for n in names if n.startswith("ray_pipeline_")}


def _kill_processes_under(directory: Path) -> None:
    """Kill every process whose command line names ``directory`` (this cluster's temp dir):
    `ray stop` would stop every Ray on the machine, other tests' included."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(directory) in cmdline:
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), signal.SIGKILL)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    token = secrets.token_hex(16)
    env = ray_node_env(token)
    gcs, dash, m1, m2 = (free_port() for _ in range(4))
    # Each node has its own temp dir: nothing is left in /tmp/ray for a later ray.init() to
    # find, two nodes on one machine do not delete each other's runtime_env files, and the
    # teardown can stop exactly this cluster. One CPU per node: the smoke search's two
    # concurrent trials land on both nodes.
    head_dir, node_dir = tmp_path_factory.mktemp("head"), tmp_path_factory.mktemp("node2")
    head = [RAY, "start", "--head", "--block", f"--port={gcs}", "--num-cpus=1"]
    head += [
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--metrics-export-port={m1}",
    ]
    worker = [RAY, "start", "--block", f"--address=127.0.0.1:{gcs}", "--num-cpus=1"]
    worker += [f"--metrics-export-port={m2}"]
    nodes = TwoNodes(env, f"http://127.0.0.1:{dash}", token, (m1, m2))
    started = []
    try:
        for argv, temp in ((head, head_dir), (worker, node_dir)):
            argv += [f"--temp-dir={temp}", "--disable-usage-stats"]
            started.append(start_logged(argv, temp / "start.log", env))
            _wait_for_nodes(nodes, len(started), temp / "start.log")
        yield nodes
    finally:
        for process in started:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
        for temp in (head_dir, node_dir):
            _kill_processes_under(temp)


def _wait_for_nodes(nodes: TwoNodes, count: int, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            listing = nodes.api("/api/v0/nodes?limit=10&detail=false")
            assert isinstance(listing, dict)
            alive = [n for n in listing["data"]["result"]["result"] if n["state"] == "ALIVE"]
            if len(alive) >= count:
                return
        time.sleep(1)
    raise AssertionError(f"Ray node {count} did not start: {log.read_text()[-2000:]}")


def _complete(db: Path) -> int:
    return sum(state == "COMPLETE" for _, state in study_states(db))


def _wait(two_nodes: TwoNodes, submission: str, seen: set[str], timeout: float) -> str:
    """Poll the job's status through the dashboard API, collecting metric names meanwhile."""
    deadline = time.monotonic() + timeout
    status = "PENDING"
    while time.monotonic() < deadline and status not in ("SUCCEEDED", "FAILED", "STOPPED"):
        time.sleep(2)
        seen |= two_nodes.metric_names()
        info = two_nodes.api(f"/api/jobs/{submission}")
        assert isinstance(info, dict)
        status = str(info["status"])
    return status


def test_job_stopped_mid_hpo_then_resumed_on_two_nodes(two_nodes: TwoNodes, tmp_path: Path) -> None:
    outputs = tmp_path / "shared"
    root = outputs / "smoke"
    variant = root / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    smoke = [
        "--",
        "python",
        "-m",
        "ray_pipeline",
        "run",
        "--config",
        "config/experiment/smoke.yaml",
    ]
    # Trials long enough (40 epochs per fold) for the stop to land mid-search.
    smoke += [f"outputs_root={outputs}", "hpo.training.epochs=40"]
    clock = time.monotonic()

    # Submit, stop with `ray job stop` once a trial has finished.
    started = two_nodes.job(
        "submit", "--working-dir", ".", "--no-wait", "--submission-id", "cut", *smoke
    )
    assert started.returncode == 0, started.stderr
    seen: set[str] = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and _complete(variant / "study.db") < 1:
        seen |= two_nodes.metric_names()
        time.sleep(1)
    stop = two_nodes.job("stop", "cut", timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert _wait(two_nodes, "cut", seen, 60) == "STOPPED"
    assert _complete(variant / "study.db") < 3
    assert json.loads((variant / "variant.json").read_text())["status"] == "failed"
    print(f"stopped after {time.monotonic() - clock:.0f} s")

    # Resubmit with resume_if_incomplete: the whole pipeline finishes, no trial runs twice.
    # (Final training refits for 1 epoch: its 40 would add a minute and prove nothing here.)
    resume = [*smoke, "hpo.run.mode=resume_if_incomplete", "final_training.epochs=1"]
    again = two_nodes.job(
        "submit", "--working-dir", ".", "--no-wait", "--submission-id", "resumed", *resume
    )
    assert again.returncode == 0, again.stderr
    status = _wait(two_nodes, "resumed", seen, 600)
    assert status == "SUCCEEDED", two_nodes.job("logs", "resumed").stdout[-3000:]
    print(f"resumed run done after {time.monotonic() - clock:.0f} s")
    logs = two_nodes.job("logs", "resumed").stdout
    assert "ray: 2 nodes share" in logs and "resuming hpo_tiny-bert" in logs
    states = [state for _, state in study_states(variant / "study.db")]
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
    assert isinstance(jobs, list)
    statuses = {(j["submission_id"], j["status"]) for j in jobs}
    assert {("cut", "STOPPED"), ("resumed", "SUCCEEDED")} <= statuses
    listing = two_nodes.api("/api/v0/actors?limit=500&detail=false")
    assert isinstance(listing, dict)
    actors = listing["data"]["result"]["result"]
    names = {(a["class_name"], a.get("name") or "") for a in actors}
    assert any(c == "BenchmarkActor" and n.startswith("benchmark-smoke-") for c, n in names)
    assert {"TrainController", "RayTrainWorker"} <= {c for c, _ in names}
    assert {
        "ray_pipeline_trials_total",
        "ray_pipeline_fold_seconds_bucket",
        "ray_pipeline_best_objective",
        "ray_pipeline_benchmark_p95_ms",
    } <= seen, seen
