#!/usr/bin/env bash
# Submit the pipeline to a Ray cluster as a Ray job (run from the repository root: the
# checkout, config/ included, travels as the job's working_dir).
#
#   scripts/submit.sh [--no-wait] [--submission-id ID] [--dry-run] CONFIG [key=value ...]
#
# The dashboard address comes from RAY_API_SERVER_ADDRESS, else RAY_ADDRESS when it is an
# http(s) URL, else http://127.0.0.1:8265 (on a laptop: `ray dashboard cluster/<name>.yaml`
# forwards it). Extra arguments are config overrides, e.g. outputs_root=/mnt/shared/outputs.
# --dry-run prints the job's entrypoint and runtime_env (JSON) and submits nothing.
# Stop a run with `ray job stop ID`; submit again with hpo.run.mode=resume_if_incomplete.
set -euo pipefail

address="${RAY_API_SERVER_ADDRESS:-}"
if [[ -z "$address" && "${RAY_ADDRESS:-}" == http* ]]; then address="$RAY_ADDRESS"; fi
address="${address:-http://127.0.0.1:8265}"
# The cluster configs turn Ray's token authentication on: the job API wants the token
# (~/.ray/auth_token, or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH; docs/cluster.md).
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

wait=1 submission_id="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-wait) wait=0; shift ;;
    --submission-id) submission_id="${2:?--submission-id needs an ID}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if [[ $# -lt 1 ]]; then
  echo "usage: scripts/submit.sh [--no-wait] [--submission-id ID] [--dry-run] CONFIG [key=value ...]" >&2
  exit 2
fi
config="$1"; shift
if [[ ! -f "$config" ]]; then
  echo "error: config file $config not found (paths are relative to the repository root)" >&2
  exit 2
fi

# MLflow credentials never travel with the job: a job's runtime_env shows in the dashboard and
# in `ray job list`. The cluster's nodes read them from MLflow's own ~/.mlflow/credentials,
# which cluster/*.yaml write on the head and copy to the workers (docs/cluster.md, §3).
if [[ -n "${MLFLOW_TRACKING_USERNAME:-}${MLFLOW_TRACKING_PASSWORD:-}${MLFLOW_TRACKING_TOKEN:-}" ]]; then
  echo "note: MLFLOW_TRACKING_* in this shell are not sent with the job; the nodes read" \
    "~/.mlflow/credentials (docs/cluster.md)" >&2
fi

exec python3 - "$address" "$wait" "$submission_id" "$dry_run" "$config" "$@" <<'PY'
import asyncio
import json
import shlex
import sys

address, wait, submission, dry_run, config, *overrides = sys.argv[1:]
# Ray runs a job's entrypoint as one command line with `sh -c` on the head. Each argument is
# quoted here (shlex.join): an override reaches the pipeline's CLI as one literal argument,
# whatever this machine's `ray` CLI does (older `ray job submit`s joined the arguments with
# subprocess.list2cmdline, which leaves `$(...)`, `;` and `|` to the head's shell).
argv = ["python", "-m", "ray_pipeline", "run", "--config", config, *overrides]
entrypoint = shlex.join(argv)
runtime_env = {"working_dir": "."}
if dry_run == "1":
    print(json.dumps({"entrypoint": entrypoint, "runtime_env": runtime_env}))
    raise SystemExit(0)
try:
    from ray.job_submission import JobStatus, JobSubmissionClient
except ImportError:
    raise SystemExit("error: python3 here has no Ray: activate the environment Ray is installed in")

client = JobSubmissionClient(address)
job = client.submit_job(
    entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission or None
)
print(f"submitted job {job} to {address}; stop it with `ray job stop {job}`", flush=True)
if wait == "0":
    raise SystemExit(0)


async def follow() -> None:
    async for lines in client.tail_job_logs(job):
        print(lines, end="", flush=True)


try:
    asyncio.run(follow())
except KeyboardInterrupt:
    raise SystemExit(f"\nstopped following; job {job} runs on (`ray job logs -f {job}`)")
status = client.get_job_status(job)
print(f"job {job}: {status.value}")
raise SystemExit(0 if status == JobStatus.SUCCEEDED else 1)
PY
