"""The variant manager: run.mode -> variant directory, atomic creation, study-key checks."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ray_pipeline.errors import ConfigError, PipelineError
from ray_pipeline.paths import VariantFiles
from ray_pipeline.run_mode import RunMode
from ray_pipeline.variants import (
    Decision,
    list_variants,
    resolve_variant,
    set_status,
)
from tests.waits import wait_for

KEY: dict[str, Any] = {"hpo": {"search_space": {"lr": {"low": 1e-5, "high": 1e-4}}, "seed": 1}}
OTHER_KEY: dict[str, Any] = {
    "hpo": {"search_space": {"lr": {"low": 1e-5, "high": 5e-4}}, "seed": 1}
}


def _resolve(stage_dir: Path, mode: RunMode, key: dict[str, Any] = KEY, **kw: Any) -> Decision:
    """What a stage would be told to do (its lease given back at once, as a stage's is when
    its ``with`` block ends)."""
    with resolve_variant(stage_dir, "hpo_b", "hpo", "b", key, mode, **kw) as decision:
        return decision


def _names(stage_dir: Path) -> list[str]:
    return [v.name for v in list_variants(stage_dir, "hpo_b")]


def test_force_new_three_times(tmp_path: Path) -> None:
    made = [_resolve(tmp_path, "force_new") for _ in range(3)]
    assert [d.action for d in made] == ["create"] * 3
    assert [d.variant.name for d in made] == ["hpo_b", "hpo_b_v2", "hpo_b_v3"]
    assert _names(tmp_path) == ["hpo_b", "hpo_b_v2", "hpo_b_v3"]
    record = json.loads(VariantFiles(tmp_path / "hpo_b_v3").record.read_text())
    assert record["number"] == 3 and record["status"] == "running"
    assert record["study_key"] == KEY and len(record["study_key_hash"]) == 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_reuse_if_exists(tmp_path: Path) -> None:
    first = _resolve(tmp_path, "reuse_if_exists")
    assert (first.action, first.variant.name) == ("create", "hpo_b")
    # Incomplete latest: resumed.
    again = _resolve(tmp_path, "reuse_if_exists")
    assert (again.action, again.variant.name) == ("resume", "hpo_b")
    set_status(again.variant, "complete")
    second = _resolve(tmp_path, "force_new")
    set_status(second.variant, "complete")
    # Complete latest: reused, nothing new created.
    reused = _resolve(tmp_path, "reuse_if_exists")
    assert (reused.action, reused.variant.name) == ("reuse", "hpo_b_v2")
    assert _names(tmp_path) == ["hpo_b", "hpo_b_v2"]


def test_reuse_refuses_incomplete_without_auto_resume(tmp_path: Path) -> None:
    _resolve(tmp_path, "force_new")
    with pytest.raises(ConfigError, match="auto_resume is false"):
        _resolve(tmp_path, "reuse_if_exists", auto_resume=False)


def test_resume_if_incomplete(tmp_path: Path) -> None:
    made = _resolve(tmp_path, "resume_if_incomplete")
    assert (made.action, made.variant.name) == ("create", "hpo_b")
    failed = set_status(made.variant, "failed")
    resumed = _resolve(tmp_path, "resume_if_incomplete")
    assert (resumed.action, resumed.variant.name) == ("resume", "hpo_b")
    assert resumed.variant.record.status == "running"
    assert failed.record.status == "failed"
    set_status(resumed.variant, "complete")
    nxt = _resolve(tmp_path, "resume_if_incomplete")
    assert (nxt.action, nxt.variant.name) == ("create", "hpo_b_v2")


@pytest.mark.parametrize("mode", ["reuse_if_exists", "resume_if_incomplete"])
def test_a_stopped_variant_is_continued_not_replaced(tmp_path: Path, mode: RunMode) -> None:
    # A budget stopped the search: its finished trials stand, and the next run (either mode)
    # runs the missing ones in the same variant (docs/run-modes.md).
    stopped = set_status(_resolve(tmp_path, "force_new").variant, "stopped")
    again = _resolve(tmp_path, mode)
    assert (again.action, again.variant.name) == ("reuse", "hpo_b")
    assert again.variant.record.status == "stopped" == stopped.record.status
    assert _names(tmp_path) == ["hpo_b"]  # no new variant


@pytest.mark.parametrize("mode", ["reuse_if_exists", "resume_if_incomplete"])
def test_changed_study_key_is_refused(tmp_path: Path, mode: RunMode) -> None:
    _resolve(tmp_path, "force_new")
    with pytest.raises(ConfigError) as exc:
        _resolve(tmp_path, mode, OTHER_KEY)
    text = str(exc.value)
    assert exc.value.exit_code == 2
    assert "hpo.search_space.lr.high (0.0001 -> 0.0005)" in text
    assert "hpo.run.mode=force_new" in text
    assert _names(tmp_path) == ["hpo_b"]  # nothing created
    # force_new is the way out, and never touches the old variant.
    assert _resolve(tmp_path, "force_new", OTHER_KEY).variant.name == "hpo_b_v2"


def test_foreign_and_half_made_directories_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "hpo_bb").mkdir()  # another backbone's prefix
    (tmp_path / "hpo_b_v4").mkdir()  # no variant.json: not listed, but its number is taken
    assert _names(tmp_path) == []
    assert _resolve(tmp_path, "force_new").variant.name == "hpo_b_v5"


def test_corrupt_variant_json_is_reported(tmp_path: Path) -> None:
    made = _resolve(tmp_path, "force_new")
    made.variant.files.record.write_text("{not json")
    with pytest.raises(PipelineError, match=r"variant\.json is not a valid VariantRecord"):
        list_variants(tmp_path, "hpo_b")


_WORKER = """
import json, os, sys, tempfile, time
from pathlib import Path
from ray_pipeline import variants

stage_dir, ready, go = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
attempts = []
mkdtemp = tempfile.mkdtemp

def staged(*args, **kwargs):
    # create_variant stages each attempt's variant.json in a directory made here, after it
    # chose the attempt's name. The first attempt waits for every process to have chosen too
    # (the test closes the `go` pipe when all have written to `ready`): the renames then race.
    path = mkdtemp(*args, **kwargs)
    attempts.append(kwargs["prefix"])
    if len(attempts) == 1:
        os.write(ready, b"r")
        assert os.read(go, 1) == b""
    return path

variants.tempfile.mkdtemp = staged
entered = time.monotonic_ns()  # CLOCK_MONOTONIC: one clock for all processes on this host
d = variants.resolve_variant(stage_dir, "hpo_b", "hpo", "b", {"k": 1}, "force_new")
left = time.monotonic_ns()
print(json.dumps({"name": d.variant.name, "entered": entered, "left": left, "attempts": attempts}))
"""


def _arrived(ready: int, got: bytearray) -> int:
    """How many bytes the workers have written into the ``ready`` pipe so far (non-blocking)."""
    with contextlib.suppress(BlockingIOError):
        got += os.read(ready, 64)
    return len(got)


@pytest.mark.slow
def test_concurrent_force_new_gets_distinct_variants(tmp_path: Path) -> None:
    n = 8
    stage_dir = tmp_path / "hpo"
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    os.set_blocking(ready_r, False)
    logs = [tmp_path / f"worker{i}.log" for i in range(n)]
    procs: list[subprocess.Popen[str]] = []
    try:
        for log in logs:
            with log.open("w") as err:
                argv = [sys.executable, "-c", _WORKER, str(stage_dir), str(ready_w), str(go_r)]
                procs.append(
                    subprocess.Popen(
                        argv,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                        pass_fds=(ready_w, go_r),
                    )
                )
        got = bytearray()
        wait_for(
            lambda: _arrived(ready_r, got) == n,
            f"all {n} workers to choose a variant name (their stderr: {tmp_path}/worker*.log)",
            timeout=120,
            still_running=lambda: all(p.poll() is None for p in procs),
        )
        # Every process chose its first name before any variant was created ...
        assert _names(stage_dir) == []
        os.close(go_w)  # ... and all go on at once: their read() of the pipe returns EOF
        go_w = -1
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:  # only a failed test leaves any running
            if p.poll() is None:
                p.kill()
                p.wait()
        for fd in (ready_r, ready_w, go_r, go_w):
            if fd >= 0:
                os.close(fd)
    assert all(p.returncode == 0 for p in procs), [log.read_text()[-2000:] for log in logs]
    runs = [json.loads(out) for out in outs]
    # The calls overlapped: all processes were inside resolve_variant at one instant, and
    # all first attempts went for the same name: one took it, the n - 1 others collided (with
    # it, then with each other) and retried.
    assert max(r["entered"] for r in runs) < min(r["left"] for r in runs), runs
    assert {r["attempts"][0] for r in runs} == {".hpo_b."}, runs
    assert sum(len(r["attempts"]) - 1 for r in runs) >= n - 1, runs
    names = sorted(r["name"] for r in runs)
    expected = sorted(["hpo_b"] + [f"hpo_b_v{i}" for i in range(2, n + 1)])
    assert names == expected
    assert sorted(_names(stage_dir)) == expected
    assert not [p for p in stage_dir.iterdir() if p.name.startswith(".")]
