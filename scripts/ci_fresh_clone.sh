#!/usr/bin/env bash
# Run CI (.ci/run) the way CI does: in a fresh clone of the committed HEAD.
# Uncommitted changes are not included -- commit first.
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
dest=$(mktemp -d "${TMPDIR:-/tmp}/ray_pipeline_ci.XXXXXX")
trap 'rm -rf "$dest"' EXIT
git clone --quiet "$repo" "$dest/repo"
cd "$dest/repo"
CI=true bash .ci/run
