"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`)
whose nodes share no outputs: the worker node runs in a mount namespace of its own with an
empty tmpfs over one directory, so what the driver (on the head) writes there, the worker node
never sees, as on another machine. The smoke pipeline is submitted with `ray job submit`:

- with its outputs there and nothing else, the job exits 2 before it writes anything;
- with ``storage.uri`` on an S3-compatible server (moto, on 127.0.0.1), an MLflow server
  (artifacts on that S3) and the study in Optuna's journal storage (docs/cluster.md), it is
  stopped with `ray job stop` mid-HPO and resubmitted: the search resumes from the bucket, no
  finished fold trains again, final training runs DDP on two workers from checkpoints in the
  bucket, and the dashboard API and the metrics endpoints show the run. The head has no CPUs:
  every trial, benchmark actor and DDP worker runs on the worker node;
- `scripts/submit.sh` sends no MLflow credential with a job and no override to the head's shell.
"""

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
from ray_pipeline.final.results import FinalMetrics
from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.storage import children, claim_namespace, is_dir, size_of, write_text
from tests.conftest import REPO
from tests.gpus import declared_gpus
from tests.processes import (
    RAY,
    free_port,
    kill_started,
    ray_node_env,
    running_mlflow_server,
    running_s3_server,
    short_temp_dir,
    start_logged,
)
from tests.run_outputs import assert_model_classifies, mlflow_runs, study_states
from tests.waits import poll_until, showing_log, wait_for

pytestmark = pytest.mark.slow


TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
"""The statuses a Ray job ends in."""

BUCKET = "pipeline"
STORAGE = f"s3://{BUCKET}/runs"
K_FOLDS = 2  # smoke.yaml's
TRIALS = 3  # smoke.yaml's


def _s3_env(endpoint: str) -> dict[str, str]:
    """What every node, the MLflow server and this process read the bucket with."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """moto's S3 server with an empty bucket ``BUCKET``; yields the S3 settings."""
    import pyarrow.fs

    with running_s3_server(tmp_path_factory.mktemp("s3")) as endpoint:
        pyarrow.fs.S3FileSystem(
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
            endpoint_override=endpoint,
            allow_bucket_creation=True,
        ).create_dir(BUCKET)
        yield _s3_env(endpoint)


@dataclass(frozen=True)
class TwoNodes:
    env: dict[str, str]
    dashboard: str
    token: str
    metrics_ports: tuple[int, int]
    unshared: Path
    """A directory that the worker node sees as an empty tmpfs of its own."""
    s3: dict[str, str]

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

    def worker_node(self) -> str:
        """The worker node's id."""
        listing = self.api("/api/v0/nodes?limit=10&detail=true")["data"]["result"]["result"]
        (worker,) = [n["node_id"] for n in listing if not n["is_head_node"]]
        return str(worker)

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
def two_nodes(tmp_path_factory: pytest.TempPathFactory, s3: dict[str, str]) -> Iterator[TwoNodes]:
    # Short temp dirs (tests.processes.short_temp_dir): the head runs the dashboard.
    with short_temp_dir("head-") as head_dir, short_temp_dir("node2-") as node_dir:
        yield from _two_nodes(tmp_path_factory.mktemp("unshared"), s3, head_dir, node_dir)


def _two_nodes(
    unshared: Path, s3: dict[str, str], head_dir: Path, node_dir: Path
) -> Iterator[TwoNodes]:
    token = secrets.token_hex(16)
    env = {**ray_node_env(token), **s3}
    gcs, dash, m1, m2 = (free_port() for _ in range(4))
    # Each node has its own temp dir: nothing is left in /tmp/ray for a later ray.init() to
    # find, and two nodes on one machine do not delete each other's runtime_env files. The head
    # has no CPUs: all that trains runs on the worker node, the one that cannot see the
    # driver's outputs (with a CPU on the head, Tune placed every trial there in one run).
    head = [RAY, "start", "--head", "--block", f"--port={gcs}", "--num-cpus=0", "--num-gpus=0"]
    head.append(f"--ray-client-server-port={free_port()}")  # not 10001: another head has it
    head += [
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--metrics-export-port={m1}",
    ]
    # Each node's dashboard agent on a port of its own: at Ray's 52365 another test's cluster
    # may have it first, and the head's agent, which runs the jobs, then serves no HTTP (every
    # `ray job submit` answered "No available agent" until the test timed out).
    head.append(f"--dashboard-agent-listen-port={free_port()}")
    # The worker node: in a private mount namespace, a tmpfs over `unshared`, then (exec, the
    # same pid) `ray start`.
    mount = 'mount -t tmpfs tmpfs "$0" && exec "$@"'
    worker = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(unshared)]
    worker += [RAY, "start", "--block", f"--address=127.0.0.1:{gcs}", "--num-cpus=2"]
    worker.append(f"--num-gpus={declared_gpus()}")  # tests/gpus.py: none, or fake ones
    worker += [f"--metrics-export-port={m2}", f"--dashboard-agent-listen-port={free_port()}"]
    nodes = TwoNodes(env, f"http://127.0.0.1:{dash}", token, (m1, m2), unshared, s3)
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


def test_submit_sends_no_credentials_and_no_override_reaches_the_heads_shell(
    two_nodes: TwoNodes, tmp_path: Path
) -> None:
    """Nothing of the MLflow credentials in the submitting shell reaches the job's runtime_env,
    the dashboard's job API, `ray job list` or the logs (the nodes read ~/.mlflow/credentials);
    overrides a shell would run reach the CLI as literal arguments (which it refuses)."""
    password, marker = f"mlflow-password-marker-{secrets.token_hex(4)}", tmp_path / "pwned"
    env = {**two_nodes.env, "RAY_API_SERVER_ADDRESS": two_nodes.dashboard}
    env |= {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
    argv = ["bash", "scripts/submit.sh", "--no-wait", "--submission-id", "quoted"]
    argv += ["config/experiment/smoke.yaml", f"x=$(touch {marker})", f"a;touch {marker}"]
    said: list[str] = []

    def submitted() -> bool:
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        said.append(done.stdout + done.stderr)
        if done.returncode == 0:
            return True
        assert "No available agent to submit job" in done.stderr, done.stderr[-3000:]
        return False

    poll_until(submitted, "the cluster to accept job 'quoted'", timeout=180, interval=1)
    assert _wait_until_ended(two_nodes, "quoted", set(), 300) == "FAILED"
    logs = two_nodes.job("logs", "quoted").stdout
    assert f"a;touch {marker}" in logs  # one argument, refused by the config loader
    assert not marker.exists(), "an override ran on the head's shell"
    job = two_nodes.api("/api/jobs/quoted")
    assert "exit code 2" in job["message"]
    assert not (job.get("runtime_env") or {}).get("env_vars"), job["runtime_env"]
    listing = two_nodes.job("list").stdout
    everything = [json.dumps(job), json.dumps(two_nodes.api("/api/jobs/")), listing, logs]
    assert "quoted" in listing
    assert not [text for text in [*everything, *said] if password in text]


def test_a_job_on_object_storage_stopped_mid_hpo_resumes_from_the_bucket(
    two_nodes: TwoNodes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in two_nodes.s3.items():  # this process reads the bucket too
        monkeypatch.setenv(name, value)
    outputs = two_nodes.unshared / "driver"  # the head's disk: the worker node sees nothing
    root = outputs / "smoke"
    variant = root / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    study = variant / "study.journal"
    # The outputs root's namespace under the URI, claimed as a run claims it (here first, so
    # the test knows where the places are).
    bucket = f"{STORAGE}/{claim_namespace(outputs)}"
    # What an earlier life of this tree's variant of the same name left in the bucket: a new
    # variant must not take it for its own (a final "checkpoint" after epoch 9).
    stale = f"{bucket}/smoke/final/tiny-bert/final_tiny-bert/checkpoints/epoch_0009"
    write_text(f"{stale}/final_state.json", "{}")
    with running_mlflow_server(tmp_path, f"s3://{BUCKET}/mlartifacts", two_nodes.env) as mlflow:
        # Trials long enough (6 epochs per fold) for the stop to land mid-search; final
        # training refits for 2 epochs.
        smoke = [*SMOKE_JOB, f"outputs_root={outputs}", f"storage.uri={STORAGE}"]
        smoke += [f"tracking.tracking_uri={mlflow}", "hpo.training.epochs=6"]
        smoke += ["hpo.checkpoint.storage_backend=journal", "final_training.epochs=2"]
        smoke.append("final_training.resources.workers=2")  # DDP (by default: 1 x 2 threads)
        clock = time.monotonic()

        # Submit; stop with `ray job stop` once a trial has finished and another is running.
        _submit(two_nodes, "cut", smoke)
        seen: set[str] = set()

        def finished_and_running() -> bool:
            seen.update(two_nodes.metric_names())
            states = [state for _, state in study_states(study)]
            return "COMPLETE" in states and "RUNNING" in states

        poll_until(
            finished_and_running,
            "job 'cut' to finish a trial while another runs",
            timeout=300,
            still_running=lambda: two_nodes.status("cut") not in TERMINAL,
            interval=1,
        )
        stop = two_nodes.job("stop", "cut", timeout=120)
        assert stop.returncode == 0, stop.stderr
        assert _wait_until_ended(two_nodes, "cut", seen, 60) == "STOPPED"
        done_before = {n for n, state in study_states(study) if state == "COMPLETE"}
        assert 1 <= len(done_before) < TRIALS
        assert json.loads((variant / "variant.json").read_text())["status"] == "failed"
        print(f"stopped after {time.monotonic() - clock:.0f} s")

        # Resubmit as it was: the search resumes from the bucket, the whole pipeline finishes.
        _submit(two_nodes, "resumed", smoke)
        status = _wait_until_ended(two_nodes, "resumed", seen, 600)
        logs = two_nodes.job("logs", "resumed").stdout
        assert status == "SUCCEEDED", logs[-4000:]
        print(f"resumed run done after {time.monotonic() - clock:.0f} s")
        assert f"ray: 2 nodes share {STORAGE}" in logs
        assert "resuming hpo_tiny-bert (round_1)" in logs, logs[-4000:]
        assert "prefer hpo.checkpoint.storage_backend=journal" not in logs

        # Every trial complete (a trial the study had started but Tune had not launched when
        # the driver went is marked FAIL and replaced), every fold on the worker node.
        assert not (variant / "study.db").exists()
        states = [state for _, state in study_states(study)]
        assert states.count("COMPLETE") == TRIALS and set(states) <= {"COMPLETE", "FAIL"}
        hpo = read_json(variant / "hpo.json", HpoResult)
        assert [t.state for t in hpo.trials].count("COMPLETE") == TRIALS
        nodes = {f.node for t in hpo.trials for f in t.folds}
        assert nodes == {two_nodes.worker_node()}, nodes
        # Each fold trained once: one fold run per fold of every trial finished before the
        # stop (a trial Tune restores with all its folds done reports them again).
        runs = mlflow_runs(mlflow, "smoke")
        assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
        folds_of = {
            n: [
                r
                for r in runs
                if r.data.tags.get("ray_pipeline.trial") == str(n)
                and r.data.tags.get("ray_pipeline.kind") == "fold"
            ]
            for n in done_before
        }
        assert all(len(f) == K_FOLDS for f in folds_of.values()), {
            n: len(f) for n, f in folds_of.items()
        }

    # The bucket holds the Tune round (trial checkpoints), the kept model and final training's
    # checkpoints (the stale one cleared); the driver's disk its records and the exported model.
    print(f"bytes written: {size_of(STORAGE)} to {STORAGE}, {size_of(outputs)} under outputs_root")
    remote = f"{bucket}/smoke/hpo/tiny-bert/hpo_tiny-bert"
    # A trial the study had started but Tune had not launched is replaced in a later round.
    assert children(f"{remote}/tune")[0] == "round_1" and is_dir(f"{remote}/best")
    epochs = f"{bucket}/smoke/final/tiny-bert/final_tiny-bert/checkpoints"
    assert children(epochs) == ["epoch_0001", "epoch_0002"], children(epochs)
    assert not list(outputs.rglob("checkpoint_0*")), "a trial checkpoint on the driver"
    assert not (variant / "tune").exists() and (variant / "best" / "config.json").is_file()
    for artifact in (
        "hpo/tiny-bert/hpo_tiny-bert/benchmark.json",
        "selection/selection.json",
        "final/tiny-bert/final_tiny-bert/model/config.json",
    ):
        assert (root / artifact).exists(), artifact
    final = root / "final" / "tiny-bert" / "final_tiny-bert"
    metrics = read_json(final / "metrics.json", FinalMetrics)
    assert metrics.refit is not None and (metrics.refit.workers, metrics.refit.backend) == (
        2,
        "train",
    )
    assert metrics.majority_rate is not None
    assert metrics.test_metrics["accuracy"] > metrics.majority_rate, metrics.test_metrics
    assert_model_classifies(final / "model")

    # The dashboard API and the metrics endpoints.
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
