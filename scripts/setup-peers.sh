#!/usr/bin/env bash
# setup-peers.sh — install the ANN peers of `htg bench index` into a Python virtual environment.
#
# Usage: scripts/setup-peers.sh [VENV]      (default VENV: $HTG_CACHE_DIR/peers-venv)
#
# Installs pinned versions of hnswlib, faiss-cpu and usearch (and numpy) with pip only, so
# benches/peers/ann_peers.py runs the same way on a fresh machine. hnswlib ships a source
# distribution: pip compiles it, which needs a C++ compiler (g++) and takes a minute or two.
# Re-running is a no-op when the pinned versions are already installed.
#
# Then: "$VENV/bin/python" benches/peers/ann_peers.py --dataset <DIR> --json <OUT> ...
set -euo pipefail

CACHE_DIR="${HTG_CACHE_DIR:-$HOME/.cache/htg}"
VENV="${1:-$CACHE_DIR/peers-venv}"
PYTHON="${PYTHON:-python3}"

# Pinned: the versions docs/BENCHMARKS.md was measured with.
PINS=(
  "numpy==2.4.6"
  "hnswlib==0.8.0"
  "faiss-cpu==1.15.1"
  "usearch==2.26.6"
)

if ! command -v "$PYTHON" >/dev/null; then
  echo "setup-peers: $PYTHON not found; install Python 3.9+ first" >&2
  exit 1
fi
if ! command -v g++ >/dev/null && ! command -v c++ >/dev/null; then
  echo "setup-peers: no C++ compiler (hnswlib builds from source); install g++ first" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# Build tools for hnswlib's source distribution, pinned too.
"$VENV/bin/python" -m pip install --quiet "pip==26.3" "setuptools==84.2.1" "wheel==0.48.0" "pybind11==3.1.0"
"$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
"$VENV/bin/python" - <<'PY'
import faiss, hnswlib, numpy, usearch
print("setup-peers: numpy", numpy.__version__, "| faiss", faiss.__version__,
      "| usearch", usearch.__version__, "| hnswlib ok")
PY
echo "setup-peers: ok, python at $VENV/bin/python"
