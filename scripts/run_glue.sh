#!/usr/bin/env bash
# GLUE as MT-DNN + SMART: multi-task training of the encoder on the GLUE tasks with SMART, per-task fine-tuning
# from that multi-task checkpoint, the dev scores of every run, and a GLUE submission folder for the test sets.
#
# Usage: bash scripts/run_glue.sh [--dry_run] ENCODER OUT_DIR [train.py flags...]
#   ENCODER   an HF encoder folder (e.g. bert-base-uncased saved locally); its tokenizer builds the cache
#   OUT_DIR   gets mtl/ (the multi-task run), <task>/ (one fine-tuning run per task), submission/ (*.tsv)
#   --dry_run print the commands only
# Environment (and those of scripts/bench_lib.sh: DATA_DIR=data/glue, NPROC, EPOCHS, LR, ADV, ...):
#   MTL_TASKS       multi-task training tasks (default: all but wnli, as mt-dnn's README does)
#   FINETUNE_TASKS  tasks fine-tuned from OUT_DIR/mtl/best (default: all nine; "" skips fine-tuning)
# e.g. NPROC=4 bash scripts/run_glue.sh ~/models/bert-base-uncased out/glue --bf16
set -euo pipefail
# shellcheck source=scripts/bench_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench_lib.sh"
bench_init glue "$@"
TASK_DEF=experiments/glue/glue_task_def.yml
MTL_TASKS="${MTL_TASKS-cola,sst,mrpc,stsb,qqp,mnli,qnli,rte}"
FINETUNE_TASKS="${FINETUNE_TASKS-cola,sst,mrpc,stsb,qqp,mnli,qnli,rte,wnli}"
[ -n "$MTL_TASKS" ] || bench_fail "MTL_TASKS is empty"
IFS=, read -r -a mtl <<<"$MTL_TASKS"
IFS=, read -r -a finetune <<<"$FINETUNE_TASKS"
all=("${mtl[@]}")
for task in "${finetune[@]}"; do
  [[ ",$MTL_TASKS," == *",$task,"* ]] || all+=("$task")
done
bench_require "$DATA_DIR" "${all[@]}"
ALL_TASKS="$(IFS=,; echo "${all[*]}")"

echo "[run_glue] tokenising $ALL_TASKS"
bench_tokenise "$TASK_DEF" "$ALL_TASKS" "$OUT_DIR/data"

echo "[run_glue] multi-task training on $MTL_TASKS"
train_py --task_def "$TASK_DEF" --data_dir "$CACHE_DIR" --init_checkpoint "${INIT:-$ENCODER}" \
  --train_datasets "$MTL_TASKS" --output_dir "$OUT_DIR/mtl" "${HPARAMS[@]}" "${TRAIN_FLAGS[@]}"

runs=("$OUT_DIR/mtl")
checkpoints=(--checkpoint "$OUT_DIR/mtl/best")
for task in "${finetune[@]}"; do
  echo "[run_glue] fine-tuning $task from the multi-task checkpoint"
  train_py --task_def "$TASK_DEF" --data_dir "$CACHE_DIR" --init_checkpoint "$OUT_DIR/mtl/best" \
    --train_datasets "$task" --output_dir "$OUT_DIR/$task" "${HPARAMS[@]}" "${TRAIN_FLAGS[@]}"
  runs+=("$OUT_DIR/$task")
  checkpoints+=(--checkpoint "$OUT_DIR/$task/best")
done

echo "[run_glue] dev scores (also in $OUT_DIR/dev_report.md)"
run python experiments/run_report.py "${runs[@]}" --output "$OUT_DIR/dev_report.md"

echo "[run_glue] test predictions and submission files in $OUT_DIR/submission"
run python experiments/glue/submission.py "${checkpoints[@]}" --data_dir "$DATA_DIR" \
  --output_dir "$OUT_DIR/submission"
