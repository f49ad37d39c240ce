#!/usr/bin/env bash
# SciTail domain adaptation: fine-tune on 0.1%, 1%, 10% and 100% of SciTail's training data (seeded subsamples),
# each run starting from --init CHECKPOINT (an MNLI or MT-DNN multi-task checkpoint, e.g. out/glue/mtl/best)
# or from the encoder, with SMART; dev scored every epoch, test with each run's best checkpoint.
#
# Usage: bash scripts/run_scitail.sh [--dry_run] [--init CHECKPOINT] ENCODER OUT_DIR [train.py flags...]
#   OUT_DIR gets p0.1/ p1/ p10/ p100/ (train.py's output each) and report.md (dev and test accuracy per run)
# Environment (and those of scripts/bench_lib.sh: DATA_DIR=data/scitail, NPROC, EPOCHS, LR, ADV, ...):
#   PERCENTS   shares of the training data, in percent (default "0.1 1 10 100")
set -euo pipefail
# shellcheck source=scripts/bench_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench_lib.sh"
bench_init scitail "$@"
PERCENTS="${PERCENTS:-0.1 1 10 100}"
bench_adapt scitail experiments/scitail/scitail_task_def.yml "$PERCENTS"
