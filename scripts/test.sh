#!/usr/bin/env bash
# Set up the environment, lint, and run the whole test suite (CPU, offline).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
source scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "[test] ruff check"
ruff check .
echo "[test] pytest"
# pytest exits 5 when it collects no tests; set -e turns that (and any failure) into a failed run.
python -m pytest "$@"
