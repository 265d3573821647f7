"""The node-loss-with-a-kept-trial-process test (issue 35, point 7) N times in a row, each run
a fresh pytest process with its own two-node cluster: prints each run's result and time, then
the passes, the failures and the total time (the figures for the issue's acceptance note).

    python benchmarks/node_loss_loop.py [--runs 10] [--stop-at-failure] [--test NODE_ID]

Exit 0 when every run passed, 1 otherwise. Runs take minutes each: the machine should be
otherwise quiet.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEST = "tests/test_node_loss.py::test_worker_node_lost_while_tune_keeps_its_trial_process"


def run_once(test: str) -> tuple[bool, float, str]:
    """One pytest run of ``test``: whether it passed, its seconds and its output's last lines."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
    return done.returncode == 0, seconds, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="how many runs (default 10)")
    parser.add_argument("--stop-at-failure", action="store_true", help="stop at a failed run")
    parser.add_argument("--test", default=TEST, help=f"the pytest node id (default {TEST})")
    args = parser.parse_args(argv)
    passed = failed = 0
    started = time.monotonic()
    for number in range(1, args.runs + 1):
        ok, seconds, tail = run_once(args.test)
        passed, failed = passed + ok, failed + (not ok)
        print(
            f"run {number}/{args.runs}: {'pass' if ok else 'FAIL'} in {seconds:.0f} s", flush=True
        )
        if not ok:
            print(tail, flush=True)
            if args.stop_at_failure:
                break
    total = time.monotonic() - started
    print(f"{passed} passed, {failed} failed of {passed + failed} runs in {total:.0f} s")
    return 0 if failed == 0 and passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
