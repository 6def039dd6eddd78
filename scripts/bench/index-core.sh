#!/usr/bin/env bash
# index-core.sh — the measurements behind docs/BENCHMARKS.md's "index core" section: htg's
# engine (through the production LocalIndex) beside hnswlib and faiss in the same run, the
# write benchmark, and the 1M-vector build.
#
# Usage: scripts/bench/index-core.sh [OUT_DIR] [STEPS]   (default OUT_DIR: docs/bench;
#        STEPS: any of synth100k,writes,emoji,fmnist,synth1m; default all)
# Needs: a built htg (cargo build), scripts/setup-peers.sh, and for emoji/fmnist the data sets
# (scripts/fetch-data.sh emoji fashion-mnist). Data set directories go under $HTG_CACHE_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-docs/bench}"
STEPS="${2:-synth100k,writes,emoji,fmnist,synth1m}"
CACHE="${HTG_CACHE_DIR:-$HOME/.cache/htg}"
H="${HTG_BIN:-${CARGO_TARGET_DIR:-target}/debug/htg}"
PY="${PEERS_PY:-$CACHE/peers-venv/bin/python}"
export HTG_DATA_DIR="${HTG_DATA_DIR:-$CACHE/data}"
EF=10,16,32,48,64,128,256
mkdir -p "$OUT"
has() { [[ ",$STEPS," == *",$1,"* ]]; }

sweep() { # name dataset-dir [extra htg args]
  local name=$1 data=$2; shift 2
  "$H" bench index --dataset "$data" --engine htg --m 16 --ef-construction 200 --ef "$EF" \
    --threads 2 --min-seconds 1 --json "$OUT/$name-core-htg.json" --plots - "$@"
  "$PY" benches/peers/ann_peers.py --dataset "$data" --libraries hnswlib,faiss --m 16 \
    --ef-construction 200 --ef "$EF" --threads 2 --min-seconds 1 --json "$OUT/$name-core-peers.json"
  "$H" bench plot "$OUT/$name-core-htg.json" "$OUT/$name-core-peers.json" --out "$OUT" \
    --prefix "$name-core" | tee "$OUT/$name-core-ratios.md"
}

if has synth100k; then
  [ -f "$CACHE/synth100k/gt.npy" ] || "$H" bench dataset synth --out "$CACHE/synth100k" --n 100000 --dim 128 --seed 1
  sweep synth100k "$CACHE/synth100k"
fi
if has writes; then
  "$H" bench writes --sizes 10000,100000,1000000 --writers 1,8 --dim 96 --seconds 5 \
    --json "$OUT/writes.json" | tee "$OUT/writes.md"
fi
if has emoji; then
  [ -f "$CACHE/emoji-emb/gt.npy" ] || "$H" bench dataset embed --data emoji --out "$CACHE/emoji-emb" --holdout 1000
  sweep emoji "$CACHE/emoji-emb"
fi
if has fmnist; then
  [ -f "$CACHE/fmnist-emb/gt.npy" ] || "$H" bench dataset embed --data fashion-mnist --out "$CACHE/fmnist-emb" --holdout 1000
  sweep fmnist "$CACHE/fmnist-emb"
fi
if has synth1m; then
  [ -f "$CACHE/synth1m/gt.npy" ] || "$H" bench dataset synth --out "$CACHE/synth1m" --n 1000000 --dim 96 --seed 1
  "$H" bench index --dataset "$CACHE/synth1m" --engine htg --m 16 --ef-construction 200 \
    --ef 16,32,64,128 --threads 2 --min-seconds 1 --json "$OUT/synth1m-core-htg.json" --plots -
  "$PY" benches/peers/ann_peers.py --dataset "$CACHE/synth1m" --libraries hnswlib --m 16 \
    --ef-construction 200 --ef 16,32,64,128 --threads 2 --min-seconds 1 --json "$OUT/synth1m-core-peers.json"
  "$H" bench plot "$OUT/synth1m-core-htg.json" "$OUT/synth1m-core-peers.json" --out "$OUT" \
    --prefix synth1m-core | tee "$OUT/synth1m-core-ratios.md"
fi
