#!/usr/bin/env bash
# engine-round2.sh — htg's engine against hnswlib and faiss in the same run, repeated, so a
# loaded machine's drift falls on both sides: htg, peers, htg, peers (`ROUNDS` times), each a
# full `htg bench index` / `ann_peers.py` sweep of one data set, then the ratio table of each
# round. The tables of docs/BENCHMARKS.md's "engine, second round" section come from this.
#
# Usage: scripts/bench/engine-round2.sh DATASET_DIR OUT_PREFIX [EFS] [ROUNDS] [extra htg args]
# Needs: a built htg (HTG_BIN, default $CARGO_TARGET_DIR/debug/htg) and the peers' venv
# (PEERS_PY; scripts/setup-peers.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=$1; OUT=$2; EF=${3:-16,32,48,64}; ROUNDS=${4:-2}; shift $(( $# < 4 ? $# : 4 ))
CACHE="${HTG_CACHE_DIR:-$HOME/.cache/htg}"
H="${HTG_BIN:-${CARGO_TARGET_DIR:-target}/debug/htg}"
PY="${PEERS_PY:-$CACHE/peers-venv/bin/python}"
LIBS="${PEER_LIBS:-hnswlib,faiss}"
mkdir -p "$(dirname "$OUT")"
for r in $(seq 1 "$ROUNDS"); do
  "$H" bench index --dataset "$DATA" --engine htg --m 16 --ef-construction 200 --ef "$EF" \
    --threads 2 --min-seconds 1 --no-exact --json "$OUT-r$r-htg.json" --plots - "$@"
  "$PY" benches/peers/ann_peers.py --dataset "$DATA" --libraries "$LIBS" --m 16 \
    --ef-construction 200 --ef "$EF" --threads 2 --min-seconds 1 --json "$OUT-r$r-peers.json"
  "$H" bench plot "$OUT-r$r-htg.json" "$OUT-r$r-peers.json" --out "$(dirname "$OUT")" \
    --prefix "$(basename "$OUT")-r$r" | tee "$OUT-r$r-ratios.md"
done
