#!/usr/bin/env bash
# Download the official GLUE, SNLI 1.0, SciTail v1.1 and ANLI v1.0 files, verify them, unpack them, and turn
# them into canonical JSONL with each benchmark's prepare.py. Needs network access to the official hosts (or
# a mirror, below); nothing else here downloads data.
#
# Usage: bash scripts/get_data.sh [BENCH...]     BENCH: glue snli scitail anli (default: all four)
# Environment:
#   RAW_DIR      where the archives go and are unpacked (default data/raw)
#   DATA_ROOT    where the canonical JSONL goes: <DATA_ROOT>/<bench>/ (default data)
#   DATA_SOURCE  a mirror: every file is fetched from <DATA_SOURCE>/<official file name> (https:// or file://)
#   GLUE_URL     a mirror for GLUE's files alone (as DATA_SOURCE)
#   SNLI_URL SCITAIL_URL ANLI_URL   the full URL of that benchmark's zip
#   VERIFY_SHA256=0   skip the published checksums (SNLI's zip, MRPC's corpus files) for a re-packed mirror;
#                the unpacked files are always checked to be the ones prepare.py reads
# Every benchmark is attempted; the summary names each that failed and at which step, and the exit status is
# non-zero if any did.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RAW_DIR="${RAW_DIR:-data/raw}"
DATA_ROOT="${DATA_ROOT:-data}"
DATA_SOURCE="${DATA_SOURCE:-}"
VERIFY_SHA256="${VERIFY_SHA256:-1}"
[[ "$VERIFY_SHA256" =~ ^[01]$ ]] || { echo "error: VERIFY_SHA256=$VERIFY_SHA256 is not 0 or 1" >&2; exit 2; }
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(glue snli scitail anli)
for bench in "${benches[@]}"; do
  case "$bench" in
    glue | snli | scitail | anli) ;;
    *) echo "error: unknown benchmark '$bench' (glue, snli, scitail, anli)" >&2; exit 2 ;;
  esac
done

failed=()
for bench in "${benches[@]}"; do
  source_args=()
  case "$bench" in
    glue) base="${GLUE_URL:-$DATA_SOURCE}"; url="" ;;
    snli) base="$DATA_SOURCE"; url="${SNLI_URL:-}" ;;
    scitail) base="$DATA_SOURCE"; url="${SCITAIL_URL:-}" ;;
    anli) base="$DATA_SOURCE"; url="${ANLI_URL:-}" ;;
  esac
  [ -z "$base" ] || source_args+=(--base_url "$base")
  [ -z "$url" ] || source_args+=(--url "$url")
  [ "$VERIFY_SHA256" = 1 ] || source_args+=(--no_verify_sha256)
  echo "[get_data] $bench: download, verify, unpack into $RAW_DIR"
  if ! python experiments/download.py "$bench" --raw_dir "$RAW_DIR" "${source_args[@]}"; then
    failed+=("$bench (download/verify)")
    continue
  fi
  echo "[get_data] $bench: canonical JSONL into $DATA_ROOT/$bench"
  case "$bench" in
    glue) prepare=(--glue_dir "$RAW_DIR/glue_data") ;;
    snli) prepare=(--snli_dir "$RAW_DIR/snli_1.0") ;;
    scitail) prepare=(--scitail_dir "$RAW_DIR/SciTailV1.1") ;;
    anli) prepare=(--anli_dir "$RAW_DIR/anli_v1.0") ;;
  esac
  if ! python "experiments/$bench/prepare.py" "${prepare[@]}" --output_dir "$DATA_ROOT/$bench"; then
    failed+=("$bench (prepare)")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "[get_data] FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "[get_data] done: ${benches[*]} in $DATA_ROOT"
