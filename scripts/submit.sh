#!/usr/bin/env bash
# Submit the pipeline to a Ray cluster as a Ray job (run from the repository root: the
# checkout, config/ included, travels as the job's working_dir).
#
#   scripts/submit.sh [--no-wait] [--submission-id ID] CONFIG [key=value ...]
#
# The dashboard address comes from RAY_API_SERVER_ADDRESS, else RAY_ADDRESS when it is an
# http(s) URL, else http://127.0.0.1:8265 (on a laptop: `ray dashboard cluster/<name>.yaml`
# forwards it). Extra arguments are config overrides, e.g. outputs_root=/mnt/shared/outputs.
# Stop a run with `ray job stop ID`; submit again with hpo.run.mode=resume_if_incomplete.
set -euo pipefail

address="${RAY_API_SERVER_ADDRESS:-}"
if [[ -z "$address" && "${RAY_ADDRESS:-}" == http* ]]; then address="$RAY_ADDRESS"; fi
address="${address:-http://127.0.0.1:8265}"

job_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-wait) job_args+=(--no-wait); shift ;;
    --submission-id) job_args+=(--submission-id "$2"); shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if [[ $# -lt 1 ]]; then
  echo "usage: scripts/submit.sh [--no-wait] [--submission-id ID] CONFIG [key=value ...]" >&2
  exit 2
fi
config="$1"; shift
if [[ ! -f "$config" ]]; then
  echo "error: config file $config not found (paths are relative to the repository root)" >&2
  exit 2
fi

# MLflow credentials (an authenticated tracking server, cluster/*.yaml) travel to the job's
# driver and workers in its runtime_env, from this shell's environment: never on a command
# line, never in a committed file. The file holding them is private and removed afterwards.
runtime_env=()
if [[ -n "${MLFLOW_TRACKING_USERNAME:-}${MLFLOW_TRACKING_PASSWORD:-}${MLFLOW_TRACKING_TOKEN:-}" ]]; then
  env_file="$(mktemp --suffix=.yaml)"
  chmod 600 "$env_file"
  trap 'rm -f "$env_file"' EXIT
  python3 - "$env_file" <<'PY'
import json, os, sys
names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
env = {n: os.environ[n] for n in names if os.environ.get(n)}
with open(sys.argv[1], "w") as f:
    f.write("working_dir: .\nenv_vars: " + json.dumps(env) + "\n")
PY
  runtime_env=(--runtime-env "$env_file")
fi

ray job submit --address "$address" --working-dir . "${runtime_env[@]}" "${job_args[@]}" \
  -- python -m ray_pipeline run --config "$config" "$@"
