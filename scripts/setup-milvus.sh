#!/usr/bin/env bash
# setup-milvus.sh — install Milvus Lite (a single-process Milvus with the real gRPC API) into a
# Python virtual environment, for the Milvus half of the tests and `htg bench index`.
#
# Usage: scripts/setup-milvus.sh [VENV]      (default VENV: $HTG_CACHE_DIR/milvus-venv)
#
# Milvus Lite's server imports pymilvus's generated gRPC code, so both are installed, pinned.
# Re-running is a no-op when the pinned versions are already installed.
#
# Then start a server with:
#   "$VENV/bin/python" -m milvus_lite server --data-dir DIR --host 127.0.0.1 --port 19530
# and point htg at it: --index milvus://127.0.0.1:19530/COLLECTION
set -euo pipefail

CACHE_DIR="${HTG_CACHE_DIR:-$HOME/.cache/htg}"
VENV="${1:-$CACHE_DIR/milvus-venv}"
PYTHON="${PYTHON:-python3}"

# Pinned: the versions the tests and docs/SCALE_OUT.md were run with.
PINS=("milvus-lite==3.2.2" "pymilvus==3.0.2")

if ! command -v "$PYTHON" >/dev/null; then
  echo "setup-milvus: $PYTHON not found; install Python 3.9+ first" >&2
  exit 1
fi
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip freeze 2>/dev/null \
  | grep -qx "milvus-lite==3.2.2" && "$VENV/bin/python" -m pip freeze | grep -qx "pymilvus==3.0.2"; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV" || {
    echo "setup-milvus: cannot create a venv (on Debian: apt-get install python3-venv)" >&2
    exit 1
  }
fi
"$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
echo "setup-milvus: Milvus Lite ready in $VENV"
