#!/usr/bin/env bash
# graph-qps.sh — engine changes measured alone: builds of ann/examples/graph_qps (one per
# change) and hnswlib, interleaved ROUNDS times on one saved graph each, with the median QPS of
# every variant and its ratio to hnswlib's median. The per-change table of docs/BENCHMARKS.md's
# "engine, second round" comes from this.
#
# Usage: scripts/bench/graph-qps.sh ROUNDS SECONDS EF VARIANT...   (VARIANT: a graph_qps binary,
#        or `hnswlib`). Env: DSET (data set dir), GFILE / HFILE (saved htg / hnswlib index;
#        built on first use), PEERS_PY (python with hnswlib).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=$1; S=$2; EF=$3; shift 3
CACHE="${HTG_CACHE_DIR:-$HOME/.cache/htg}"
D=${DSET:-$CACHE/synth100k}; G=${GFILE:-$CACHE/graph-qps.htg}; H=${HFILE:-$CACHE/graph-qps.hnswlib}
PY="${PEERS_PY:-$CACHE/peers-venv/bin/python}"
LOG=$(mktemp)
for r in $(seq 1 "$R"); do
  for v in "$@"; do
    if [ "$v" = hnswlib ]; then out=$("$PY" scripts/bench/hnswlib_qps.py "$D" "$EF" "$S" "$H" 2>/dev/null)
    else out=$("$v" "$D" "$EF" "$S" "$G" 2>/dev/null); fi
    echo "$out" | sed "s/^/$r $(basename "$v") /"
  done
done | tee "$LOG"
python3 - "$LOG" <<'PY'
import collections, re, statistics, sys
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name = line.split()[1]
    for m in re.finditer(r"ef=(\d+) R@10=([\d.]+) qps=(\d+)", line):
        d[(name, m.group(1))].append((float(m.group(2)), int(m.group(3))))
peer = {ef: statistics.median(q for _, q in v) for (n, ef), v in d.items() if n == "hnswlib"}
for (n, ef), v in sorted(d.items()):
    med = statistics.median(q for _, q in v)
    print(f"{n:10s} ef={ef} R@10={v[0][0]:.4f} median_qps={med:.0f} runs={[q for _, q in v]} "
          f"ratio_vs_hnswlib={med / peer.get(ef, float('nan')):.2f}")
PY
rm -f "$LOG"
