#!/usr/bin/env bash
# setup-torch.sh — install PyTorch (CPU use) into a Python virtual environment for the
# training-step peer, benches/peers/torch_step.py.
#
# Usage: scripts/setup-torch.sh [VENV]      (default VENV: $HTG_CACHE_DIR/torch-venv)
#
# Installs the pinned PyPI `torch` wheel with pip only. The PyPI wheel for Linux x86_64 pulls
# the CUDA runtime packages as dependencies: about 5.4 GB on disk, installed once. The peer
# runs it on the CPU only. Re-running is a no-op when the pinned version is installed.
#
# Then: "$VENV/bin/python" benches/peers/torch_step.py --threads 2 --method batchhard
set -euo pipefail

CACHE_DIR="${HTG_CACHE_DIR:-$HOME/.cache/htg}"
VENV="${1:-$CACHE_DIR/torch-venv}"
PYTHON="${PYTHON:-python3}"
# Pinned: the version the step comparison in the model card was measured with.
TORCH_PIN="${TORCH_PIN:-torch==2.15.0}"

if ! command -v "$PYTHON" >/dev/null; then
  echo "setup-torch: $PYTHON not found; install Python 3.10+ first" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '${TORCH_PIN#torch==}' else 1)" 2>/dev/null; then
  "$VENV/bin/python" -m pip install --quiet "$TORCH_PIN"
fi
"$VENV/bin/python" -c "import torch; print('setup-torch: torch', torch.__version__, '| threads', torch.get_num_threads())"
echo "setup-torch: ok, python at $VENV/bin/python"
