#!/usr/bin/env bash
# Shared by scripts/run_{glue,snli,scitail,anli}.sh (sourced, not run). Each script calls
#   bench_init BENCH "$@"
# which reads   [--dry_run] [--init CHECKPOINT] ENCODER OUT_DIR [train.py flags...]
# and the environment knobs below, checks them (a bad one stops before anything runs, exit 2), and cds to the
# repo root. Then `run CMD...` prints the command and runs it (prints only, with --dry_run), and
# `train_py ARGS...` runs train.py with python, or with torchrun on NPROC processes.
#
# Environment (defaults are the MT-DNN paper's settings, section 4.2: Adamax, learning rate 5e-5, batch 32,
# at most 5 epochs, linear decay after a 0.1 warm-up; 512 word pieces at most; SMART on):
#   DATA_DIR        canonical JSONL from experiments/<bench>/prepare.py (default <repo>/data/<bench>)
#   NPROC           processes (GPUs) for torchrun (default 1: plain python)
#   EPOCHS BATCH_SIZE LR WARMUP MAX_SEQ_LEN SEED   (5, 32, 5e-5, 0.1, 512, 2018)
#   ADV             1: --adv_train (SMART with its Bregman term), 0: plain fine-tuning (default 1)
#   MAX_TRAIN_ROWS  keep at most this many rows of each train split (a seeded subsample; default: all)
#   CACHE_NAME      token-id cache folder name (default: the encoder folder's name)
set -euo pipefail

bench_fail() {
  echo "error: $*" >&2
  exit 2
}

bench_check_int() {  # NAME VALUE
  [[ "$2" =~ ^[1-9][0-9]*$ ]] || bench_fail "$1=$2 is not a positive integer"
}

bench_check_number() {  # NAME VALUE
  [[ "$2" =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]] || bench_fail "$1=$2 is not a number"
}

bench_init() {
  BENCH="$1"
  shift
  DRY_RUN=0
  INIT=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry_run) DRY_RUN=1 ;;
      --init)
        [ $# -ge 2 ] || bench_fail "--init needs a checkpoint folder"
        INIT="$2"
        shift
        ;;
      -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d'
        exit 0
        ;;
      *) break ;;
    esac
    shift
  done
  [ $# -ge 2 ] || bench_fail "usage: $0 [--dry_run] [--init CHECKPOINT] ENCODER OUT_DIR [train.py flags...]"
  ENCODER="$1"
  OUT_DIR="$2"
  shift 2
  TRAIN_FLAGS=("$@")
  [ -d "$ENCODER" ] || bench_fail "encoder folder '$ENCODER' not found (an HF model folder: config + tokenizer)"
  ENCODER="$(cd "$ENCODER" && pwd)"
  if [ -n "$INIT" ]; then
    [ -f "$INIT/mtdnn.json" ] || [ -f "$INIT/config.json" ] \
      || bench_fail "--init '$INIT' is neither one of our checkpoints (mtdnn.json) nor an HF model folder"
    INIT="$(cd "$INIT" && pwd)"
  fi
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  DATA_DIR="${DATA_DIR:-$ROOT/data/$BENCH}"
  [ -d "$DATA_DIR" ] || bench_fail "DATA_DIR '$DATA_DIR' not found (run scripts/get_data.sh $BENCH first)"
  DATA_DIR="$(cd "$DATA_DIR" && pwd)"
  NPROC="${NPROC:-1}"
  EPOCHS="${EPOCHS:-5}"
  BATCH_SIZE="${BATCH_SIZE:-32}"
  LR="${LR:-5e-5}"
  WARMUP="${WARMUP:-0.1}"
  MAX_SEQ_LEN="${MAX_SEQ_LEN:-512}"
  SEED="${SEED:-2018}"
  ADV="${ADV:-1}"
  MAX_TRAIN_ROWS="${MAX_TRAIN_ROWS:-}"
  CACHE_NAME="${CACHE_NAME:-$(basename "$ENCODER")}"
  bench_check_int NPROC "$NPROC"
  bench_check_int EPOCHS "$EPOCHS"
  bench_check_int BATCH_SIZE "$BATCH_SIZE"
  bench_check_int MAX_SEQ_LEN "$MAX_SEQ_LEN"
  bench_check_int SEED "$SEED"
  bench_check_number LR "$LR"
  bench_check_number WARMUP "$WARMUP"
  [ -z "$MAX_TRAIN_ROWS" ] || bench_check_int MAX_TRAIN_ROWS "$MAX_TRAIN_ROWS"
  [[ "$ADV" =~ ^[01]$ ]] || bench_fail "ADV=$ADV is not 0 or 1"
  [[ "$CACHE_NAME" =~ ^[A-Za-z0-9_.-]+$ ]] || bench_fail "CACHE_NAME=$CACHE_NAME: use letters, digits, . _ -"
  OUT_DIR="$(mkdir -p "$OUT_DIR" && cd "$OUT_DIR" && pwd)"
  cd "$ROOT"
  ADV_FLAGS=()
  [ "$ADV" = 0 ] || ADV_FLAGS=(--adv_train)
  # The papers' optimisation settings, shared by every training run of the benchmark scripts.
  HPARAMS=(--optimizer adamax --learning_rate "$LR" --batch_size "$BATCH_SIZE" --epochs "$EPOCHS"
    --warmup "$WARMUP" --grad_clipping 1 --seed "$SEED" "${ADV_FLAGS[@]}")
  # The train.py flags, checked by train.py's own parser before any preprocessing runs.
  python -m mt_dnn.flags "${HPARAMS[@]}" "${TRAIN_FLAGS[@]}" || exit 2
}

run() {
  local arg
  printf '+'
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@+%-]+$ ]]; then printf ' %s' "$arg"; else printf ' %q' "$arg"; fi
  done
  printf '\n'
  if [ "$DRY_RUN" = 0 ]; then
    "$@"
  fi
}

train_py() {
  if [ "$NPROC" -gt 1 ]; then
    run torchrun --nproc_per_node="$NPROC" train.py "$@"
  else
    run python train.py "$@"
  fi
}

bench_require() {  # DIR TASK... : every task's train file must be there before anything runs
  local dir="$1" task
  shift
  for task in "$@"; do
    [ -f "$dir/${task}_train.jsonl" ] \
      || bench_fail "$dir/${task}_train.jsonl not found (run experiments/$BENCH/prepare.py or scripts/get_data.sh)"
  done
}

# Tokenise TASKS (comma-separated) of TASK_DEF for the encoder; with MAX_TRAIN_ROWS (or a FRACTION of the
# train rows) the files are first copied with a subsampled train split into DEST. Sets CACHE_DIR.
bench_tokenise() {  # TASK_DEF TASKS DEST [FRACTION]
  local task_def="$1" tasks="$2" dest="$3" fraction="${4:-}" root="$DATA_DIR"
  if [ -n "$MAX_TRAIN_ROWS" ] || [ -n "$fraction" ]; then
    local sample=()
    [ -z "$MAX_TRAIN_ROWS" ] || sample+=(--max_rows "$MAX_TRAIN_ROWS")
    [ -z "$fraction" ] || sample+=(--fraction "$fraction")
    run python experiments/subsample.py --task_def "$task_def" --data_dir "$DATA_DIR" --output_dir "$dest" \
      --tasks "$tasks" --seed "$SEED" "${sample[@]}"
    root="$dest"
  fi
  run python prepro_std.py --task_def "$task_def" --root_dir "$root" --tasks "$tasks" --model "$ENCODER" \
    --cache_name "$CACHE_NAME" --max_seq_len "$MAX_SEQ_LEN" --allow_missing_splits --no_progress
  CACHE_DIR="$root/$CACHE_NAME"
}

# One fine-tuning run of TASK per share of its training data (PERCENTS, e.g. "0.1 1 10 100"), each from
# --init (or the encoder), into OUT_DIR/p<percent>/; then a report of dev and test scores.
bench_adapt() {  # TASK TASK_DEF PERCENTS
  local task="$1" task_def="$2" percent fraction runs=()
  bench_require "$DATA_DIR" "$task"
  for percent in $3; do
    bench_check_number PERCENTS "$percent"
    awk -v p="$percent" 'BEGIN { exit !(p > 0 && p <= 100) }' || bench_fail "PERCENTS: $percent is not in (0, 100]"
  done
  for percent in $3; do
    fraction=""
    [ "$percent" = 100 ] || fraction="$(awk -v p="$percent" 'BEGIN { printf "%.10g", p / 100 }')"
    echo "[run_$BENCH] $task on $percent% of its training data"
    bench_tokenise "$task_def" "$task" "$OUT_DIR/p$percent/data" "$fraction"
    train_py --task_def "$task_def" --data_dir "$CACHE_DIR" --init_checkpoint "${INIT:-$ENCODER}" \
      --train_datasets "$task" --output_dir "$OUT_DIR/p$percent" "${HPARAMS[@]}" "${TRAIN_FLAGS[@]}"
    runs+=("$OUT_DIR/p$percent")
  done
  echo "[run_$BENCH] dev and test scores (also in $OUT_DIR/report.md)"
  run python experiments/run_report.py "${runs[@]}" --output "$OUT_DIR/report.md"
}
