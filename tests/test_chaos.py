"""The chaos run in its small version (issue 35, point 8): `benchmarks/chaos.py --kills 3
--seed 1` runs the whole smoke pipeline on a two-node local cluster while three kills land at
seeded random moments (seed 1: a benchmark actor mid-measurement, the driver during the
benchmark, rerun with ``reuse_if_exists``, and the rank-0 worker of the DDP refit), and checks
its invariants: every finished fold trained once, hpo.json agrees with the study, no MLflow run
left RUNNING, no lease held, the exported model loads in ``transformers.pipeline``. Without
the baseline run (``--no-baseline``: the overhead is the acceptance run's figure, not this
test's) it took 107 s on 2 otherwise quiet cores, and 5.5 min beside other runs (load ~18).

Also here, what the 10-kill run found: a lost DDP worker fails its group once, however many of
its ranks raise (the killed rank's health check and the survivor's broken all-reduce), and is
recorded once."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import pytest

from ray_pipeline import faults
from tests.conftest import REPO
from tests.processes import kill_started, start_logged

CHAOS = REPO / "benchmarks" / "chaos.py"


@pytest.mark.slow
def test_three_kills_at_random_moments_keep_every_invariant(tmp_path: Path) -> None:
    report_file, log = tmp_path / "chaos.json", tmp_path / "chaos.log"
    argv = [sys.executable, str(CHAOS), "--kills", "3", "--seed", "1", "--no-baseline"]
    argv += ["--json", str(report_file), "--workdir", str(tmp_path / "work")]
    chaos = start_logged(argv, log, cwd=tmp_path)  # its own session: all it starts ends with it
    try:
        code = chaos.wait(timeout=1500)
    finally:
        with contextlib.suppress(OSError):
            kill_started([chaos])  # on a timeout: the script, its cluster and its drivers
    text = log.read_text(errors="replace")
    assert report_file.is_file(), text[-4000:]
    report = json.loads(report_file.read_text())
    failed = {name: c["detail"] for name, c in report.get("invariants", {}).items() if not c["ok"]}
    assert not failed, failed
    assert code == 0 and report["ok"], report.get("error") or text[-4000:]
    assert len(report["kills"]) == 3
    assert sum(report["kills_by_kind"].values()) == 3
    epochs = report["epochs"]
    assert epochs["trained"] == epochs["distinct"] + epochs["retrained"]
    assert epochs["retrained"] >= 0


def test_a_worker_group_failure_is_recorded_once_with_every_ranks_cause(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "failures.jsonl"
    callback = faults.train_failure_callback(log, None, "final f", "Ray Train retries")
    lost = {
        1: RuntimeError("A worker health check failed."),
        0: RuntimeError("Read error [127.0.0.1]:56713: Connection reset by peer.\nmore"),
    }
    callback.after_exception(None, lost)
    (failure,) = faults.read_failures(log)
    assert failure.cause == (
        "rank 0: RuntimeError: Read error [127.0.0.1]:56713: Connection reset by peer.; "
        "rank 1: RuntimeError: A worker health check failed."
    )
    assert (
        capsys.readouterr().out
        == f"final f: worker group failed ({failure.cause}); Ray Train retries\n"
    )
