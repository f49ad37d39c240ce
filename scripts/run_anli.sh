#!/usr/bin/env bash
# ANLI: fine-tune on the three rounds' training data together (task anli) with SMART, picking the checkpoint by
# the all-rounds dev accuracy, and report dev and test accuracy per round (dev_r1..3, test_r1..3) and overall.
# The ANLI paper trains on SNLI+MNLI+FEVER-NLI as well; start from such a checkpoint with --init.
#
# Usage: bash scripts/run_anli.sh [--dry_run] [--init CHECKPOINT] ENCODER OUT_DIR [train.py flags...]
#   OUT_DIR gets <task>/ per run (train.py's output) and report.md
# Environment (and those of scripts/bench_lib.sh: DATA_DIR=data/anli, NPROC, EPOCHS, LR, ADV, ...):
#   TASKS   the tasks to train, one run each (default "anli"; also anli_r1, anli_r2, anli_r3: one round)
set -euo pipefail
# shellcheck source=scripts/bench_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench_lib.sh"
bench_init anli "$@"
TASK_DEF=experiments/anli/anli_task_def.yml
TASKS="${TASKS:-anli}"
IFS=, read -r -a tasks <<<"$TASKS"
for task in "${tasks[@]}"; do
  [[ "$task" =~ ^anli(_r[123])?$ ]] || bench_fail "TASKS: unknown ANLI task '$task' (anli, anli_r1, anli_r2, anli_r3)"
done
bench_require "$DATA_DIR" "${tasks[@]}"

echo "[run_anli] tokenising $TASKS"
bench_tokenise "$TASK_DEF" "$TASKS" "$OUT_DIR/data"
runs=()
for task in "${tasks[@]}"; do
  echo "[run_anli] training $task"
  train_py --task_def "$TASK_DEF" --data_dir "$CACHE_DIR" --init_checkpoint "${INIT:-$ENCODER}" \
    --train_datasets "$task" --best_metric "$task:acc" --output_dir "$OUT_DIR/$task" "${HPARAMS[@]}" \
    "${TRAIN_FLAGS[@]}"
  runs+=("$OUT_DIR/$task")
done
echo "[run_anli] dev and test accuracy (also in $OUT_DIR/report.md)"
run python experiments/run_report.py "${runs[@]}" --output "$OUT_DIR/report.md"
