"""One writer per variant (``lease.py``): a second run on a variant another live run holds
exits 2 naming it; a lease whose holder is gone is taken over. The rules with real processes
as holders (one this test starts and kills by its pid), and end to end: a second
``ray-pipeline hpo`` while the first searches, then, after ``kill -9`` of the first, a run
that takes the lease over and resumes the search."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json, write_json
from ray_pipeline.cli import main
from ray_pipeline.errors import ConfigError
from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.lease import LeaseRecord, _machine, acquire, read_lease
from ray_pipeline.loading import load_config
from tests.builders import add_hpo_variant
from tests.conftest import MakeExp
from tests.processes import cli_process, kill_started
from tests.waits import wait_for


def _record(pid: int, host: str | None = None, age_s: float = 0.0) -> LeaseRecord:
    """A lease of ``pid`` on this machine, or on ``host`` (another machine), beating
    ``age_s`` ago."""
    beat = (datetime.now(timezone.utc) - timedelta(seconds=age_s)).isoformat(timespec="seconds")
    return LeaseRecord(
        owner=f"o{pid}",
        host=host or socket.gethostname(),
        pid=pid,
        since=beat,
        heartbeat=beat,
        machine=f"{host}:boot" if host else _machine(),
    )


def test_a_live_holder_refuses_and_a_dead_one_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lease.json"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_json(path, _record(holder.pid))
        with pytest.raises(ConfigError, match=f"another run is working on it \\(pid {holder.pid} "):
            acquire(path, "hpo_x")
        assert read_lease(path) == _record(holder.pid) or read_lease(path) is not None
    finally:
        holder.kill()  # exactly the process this test started
        holder.wait()
    lease = acquire(path, "hpo_x")
    assert f"taking over the lease of a run that is gone (pid {holder.pid} " in (
        capsys.readouterr().out
    )
    mine = read_lease(path)
    assert mine is not None and mine.pid == os.getpid() and mine.owner == lease.record.owner
    lease.release()
    assert not path.exists()


def test_a_holder_on_another_host_is_trusted_while_its_heartbeat_is_fresh(tmp_path: Path) -> None:
    path = tmp_path / "lease.json"
    write_json(path, _record(1, host="elsewhere", age_s=60))
    with pytest.raises(ConfigError, match="pid 1 on elsewhere"):
        acquire(path, "hpo_x")
    write_json(path, _record(1, host="elsewhere", age_s=3600))  # it stopped beating long ago
    acquire(path, "hpo_x").release()


def test_one_of_two_runs_racing_for_a_free_lease_gets_it(tmp_path: Path) -> None:
    path = tmp_path / "lease.json"
    code = (
        "import sys, time; from pathlib import Path; from ray_pipeline.lease import acquire\n"
        "from ray_pipeline.errors import ConfigError\n"
        "try:\n    acquire(Path(sys.argv[1]), 'v')\nexcept ConfigError:\n    sys.exit(3)\n"
        "time.sleep(5)\n"
    )
    runs = [subprocess.Popen([sys.executable, "-c", code, str(path)]) for _ in range(4)]
    codes = sorted(r.wait(timeout=60) for r in runs)
    assert codes == [0, 3, 3, 3], codes


def _variant(path: Path) -> Path:
    return path.parent / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"


@pytest.mark.slow
def test_a_second_run_on_a_held_variant_exits_2_and_a_dead_holders_lease_is_taken(
    smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    path = smoke_experiment()
    args = ["hpo", "--config", str(path), "tracking.enabled=false", "hpo.num_samples=12"]
    args += ["hpo.training.epochs=4", "resources.max_concurrent_trials=1"]
    first = cli_process(*args, log=tmp_path / "first.log")
    lease = _variant(path) / "lease.json"
    try:
        wait_for(
            lambda: (held := read_lease(lease)) is not None and held.pid == first.pid,
            "the first run to hold the variant's lease",
            timeout=120,
            still_running=lambda: first.poll() is None,
        )
        second = subprocess.run(
            [sys.executable, "-m", "ray_pipeline", *args], capture_output=True, text=True
        )
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"another run is working on it (pid {first.pid} on " in second.stderr
        # The first run goes on, still holding the variant: it is killed mid-search (12
        # trials one at a time take it far longer than the second run's refusal).
        assert first.poll() is None
        held = read_lease(lease)
        assert held is not None and held.pid == first.pid, held
    finally:
        kill_started([first])  # kill -9 of exactly the run this test started, and its Ray
    third = cli_process(*args, log=tmp_path / "third.log")
    assert third.wait(timeout=600) == 0, (tmp_path / "third.log").read_text()[-3000:]
    log = (tmp_path / "third.log").read_text()
    assert f"taking over the lease of a run that is gone (pid {first.pid} " in log
    result = read_json(_variant(path) / "hpo.json", HpoResult)
    assert result.finished == 12
    assert not lease.exists()  # given back at the end


@pytest.mark.slow
def test_a_benchmark_of_a_variant_another_run_holds_exits_2_and_writes_nothing(
    ray_cluster: None, smoke_experiment: MakeExp, capsys: pytest.CaptureFixture[str]
) -> None:
    path = smoke_experiment()
    config = load_config(path)
    free, held = (
        add_hpo_variant(config, "tiny-bert", 0.8),
        add_hpo_variant(config, "tiny-bert", 0.7),
    )
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        holders = _record(holder.pid)
        write_json(held.files.lease, holders)
        assert main(["benchmark", "--config", str(path)]) == 2
        said = "".join(capsys.readouterr())
        assert f"{held.name}: another run is working on it (pid {holder.pid} " in said, said
        # Nothing measured, and the lease it took on the free variant first is given back.
        assert not free.files.benchmark.exists() and not held.files.benchmark.exists()
        assert not free.files.lease.exists()
        assert read_lease(held.files.lease) == holders
    finally:
        holder.kill()  # exactly the process this test started
        holder.wait()
    assert main(["benchmark", "--config", str(path)]) == 0
    said = "".join(capsys.readouterr())
    assert f"taking over the lease of a run that is gone (pid {holder.pid} " in said, said
    assert free.files.benchmark.is_file() and held.files.benchmark.is_file()
    assert not free.files.lease.exists() and not held.files.lease.exists()  # given back
