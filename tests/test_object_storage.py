"""Two nodes that share no filesystem, with checkpoints and models on object storage
(``storage.uri``, docs/cluster.md): a real two-node Ray cluster on this machine, an
S3-compatible server (moto) and an MLflow server (artifacts on that S3) on 127.0.0.1.

The worker node's `ray start` runs in a mount namespace of its own with an empty tmpfs over
the driver's outputs root: what its trials, actors and tasks write there, the driver never
sees, and they find nothing of the driver's there, as on another machine. The head has no
CPUs, so every trial, benchmark actor and final training task runs on the worker node."""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.final.results import FinalMetrics
from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.storage import children, is_dir, size_of, write_text
from tests.conftest import REPO, SMOKE
from tests.processes import (
    CLI,
    kill_started,
    ray_node_env,
    running_mlflow_server,
    running_s3_server,
    start_logged,
    two_node_cluster,
)
from tests.run_outputs import assert_model_classifies, mlflow_runs
from tests.waits import wait_for

pytestmark = pytest.mark.slow

BUCKET = "pipeline"
STORAGE = f"s3://{BUCKET}/runs"
TRIALS = 4
K_FOLDS = 2  # smoke.yaml's


def _s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }


def _make_bucket(endpoint: str) -> None:
    import pyarrow.fs

    s3 = pyarrow.fs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        endpoint_override=endpoint,
        allow_bucket_creation=True,
    )
    s3.create_dir(BUCKET)


def _own_mounts(outputs: Path) -> tuple[str, ...]:
    """A command prefix: a private mount namespace with an empty tmpfs over ``outputs``."""
    mount = 'mount -t tmpfs ray-pipeline-node "$0" && exec "$@"'
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", mount, str(outputs))


def _trials(pattern: str, log: Path) -> set[int]:
    return {int(n) for n in re.findall(pattern, log.read_text(errors="replace"))}


def _bytes_under(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def test_two_nodes_without_shared_outputs_run_on_object_storage(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = tmp_path / "outputs"  # the driver's own disk
    outputs.mkdir()
    probe = subprocess.run([*_own_mounts(outputs), "true"], capture_output=True, text=True)
    assert probe.returncode == 0, (
        "this test gives the worker node its own view of the outputs root with `unshare "
        f"--mount` (root, or CAP_SYS_ADMIN): {probe.stderr.strip()}"
    )
    head_dir, node_dir = tmp_path_factory.mktemp("head"), tmp_path_factory.mktemp("node")
    with running_s3_server(tmp_path) as endpoint:
        _make_bucket(endpoint)
        s3 = _s3_env(endpoint)
        for name, value in s3.items():  # this process reads the bucket at the end
            monkeypatch.setenv(name, value)
        env = {**ray_node_env(secrets.token_hex(16)), **s3}
        with (
            running_mlflow_server(tmp_path, f"s3://{BUCKET}/mlartifacts", env) as mlflow_uri,
            two_node_cluster(
                head_dir,
                node_dir,
                env,
                head_cpus=0,
                worker_cpus=2,
                worker_prefix=_own_mounts(outputs),
            ) as cluster,
        ):
            driver_env = {**env, "RAY_ADDRESS": cluster.address}
            args = ["--config", str(SMOKE), f"outputs_root={outputs}"]
            args += [f"tracking.tracking_uri={mlflow_uri}", f"hpo.num_samples={TRIALS}"]

            # Without object storage the run is refused: the worker node cannot see the
            # driver's outputs root. Nothing is written.
            refused = subprocess.run(
                [*CLI, "hpo", *args],
                env=driver_env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert "outputs_root" in refused.stderr and "not shared storage" in refused.stderr
            assert not list(outputs.iterdir())

            # What a lost driver disk's variant of the same name left in the bucket: a new
            # variant must not take it for its own (a final "checkpoint" after epoch 9).
            stale = f"{STORAGE}/smoke/final/tiny-bert/final_tiny-bert/checkpoints/epoch_0009"
            write_text(f"{stale}/final_state.json", "{}")

            # With it: the driver is killed mid-HPO, with a trial finished and one running.
            args.append(f"storage.uri={STORAGE}")
            first_log = tmp_path / "first.log"
            first = start_logged([*CLI, "run", *args], first_log, driver_env, cwd=REPO)
            try:
                wait_for(
                    lambda: (
                        _trials(r"trial (\d+) done in", first_log)
                        and _trials(r"trial (\d+) started", first_log)
                        - _trials(r"trial (\d+) done in", first_log)
                    ),
                    "a finished trial and a running one",
                    timeout=400,
                    still_running=lambda: first.poll() is None,
                )
                done_before = _trials(r"trial (\d+) done in", first_log)
            finally:
                kill_started([first])  # the driver only: the cluster is the test's

            # Run again: the search resumes from the bucket, no finished trial trains again.
            second_log = tmp_path / "second.log"
            with second_log.open("w") as out:
                second = subprocess.run(
                    [*CLI, "run", *args],
                    env=driver_env,
                    cwd=REPO,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=900,
                )
            text = second_log.read_text()
            assert second.returncode == 0, text[-4000:]
            assert "resuming hpo_tiny-bert (round_1)" in text, text[-4000:]

            variant = outputs / "smoke" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
            hpo = read_json(variant / "hpo.json", HpoResult)
            # A trial the study had started but Tune had not launched when the driver died
            # is marked FAIL and replaced; the rest complete.
            states = [t.state for t in hpo.trials]
            assert states.count("COMPLETE") == TRIALS and set(states) <= {"COMPLETE", "FAIL"}
            nodes = {f.node for t in hpo.trials for f in t.folds}
            assert len(nodes) == 1, nodes  # the worker node trained every fold
            # Each fold trained once: one fold run per fold of every trial the first driver
            # finished (a trial Tune restores with all its folds done reports them again).
            runs = mlflow_runs(mlflow_uri, "smoke")
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

            # The bucket holds the Tune round (trial checkpoints), the kept model and final
            # training's checkpoints; the driver's disk its records and the exported model.
            in_bucket, on_driver = size_of(STORAGE), _bytes_under(outputs)
            print(f"bytes written: {in_bucket} to {STORAGE}, {on_driver} under outputs_root")
            remote = f"{STORAGE}/smoke/hpo/tiny-bert/hpo_tiny-bert"
            assert children(f"{remote}/tune") == ["round_1"] and is_dir(f"{remote}/best")
            epochs = f"{STORAGE}/smoke/final/tiny-bert/final_tiny-bert/checkpoints"
            assert children(epochs) == ["epoch_0001", "epoch_0002"], children(epochs)
            assert not list(outputs.rglob("checkpoint_0*")), "a trial checkpoint on the driver"
            assert not (variant / "tune").exists() and (variant / "best" / "config.json").is_file()

    final = outputs / "smoke" / "final" / "tiny-bert" / "final_tiny-bert"
    assert_model_classifies(final / "model")
    metrics = read_json(final / "metrics.json", FinalMetrics)
    assert metrics.majority_rate is not None
    assert metrics.test_metrics["accuracy"] > metrics.majority_rate, metrics.test_metrics
