#!/usr/bin/env bash
# SNLI: fine-tune the encoder (or --init CHECKPOINT, e.g. an MT-DNN multi-task checkpoint) on SNLI with SMART,
# scoring dev every epoch and test with the best checkpoint, optionally on shares of the training data
# (the MT-DNN paper's domain-adaptation setting: PERCENTS="0.1 1 10 100").
#
# Usage: bash scripts/run_snli.sh [--dry_run] [--init CHECKPOINT] ENCODER OUT_DIR [train.py flags...]
#   OUT_DIR gets p<percent>/ per run (train.py's output: best/, last/, results.json, ...) and report.md
# Environment (and those of scripts/bench_lib.sh: DATA_DIR=data/snli, NPROC, EPOCHS, LR, ADV, ...):
#   PERCENTS   shares of the training data, in percent, one run each (default "100")
set -euo pipefail
# shellcheck source=scripts/bench_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench_lib.sh"
bench_init snli "$@"
PERCENTS="${PERCENTS:-100}"
bench_adapt snli experiments/snli/snli_task_def.yml "$PERCENTS"
