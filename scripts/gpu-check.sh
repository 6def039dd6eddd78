#!/usr/bin/env bash
# gpu-check.sh — the photo model on ONNX Runtime's CUDA and TensorRT providers through `ort`:
# images/s at batch 1, 32 and 128 beside the CPU provider, and the largest difference of the
# GPU embeddings from the CPU ones. Meant for a machine with an NVIDIA GPU; budget under 10
# minutes (a cold release build with the GPU features is most of it).
#
# Usage: scripts/gpu-check.sh [OUT_DIR]   (default: target/gpu-check)
#
# Needs: the NVIDIA driver (libcuda.so.1); everything else comes from scripts/setup-gpu.sh
# (PyPI wheels) and scripts/fetch-data.sh onnxruntime. Prints one summary table at the end;
# the JSON reports stay in OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/gpu-check}"
mkdir -p "$OUT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/htg-target-gpu}"

t0=$(date +%s)
GPU_LIB="$(scripts/setup-gpu.sh | tail -1)"
CPU_LIB="$(scripts/fetch-data.sh onnxruntime | grep libonnxruntime | head -1)"
cargo build --release --features cuda,tensorrt --bin htg
HTG="$CARGO_TARGET_DIR/release/htg"
echo "gpu-check: built in $(( $(date +%s) - t0 )) s"

# A folder of 128 photos, so batch 128 is one full batch: the committed gallery and queries,
# repeated.
IMGS="$OUT/images"
rm -rf "$IMGS"; mkdir -p "$IMGS"
i=0
while [ "$i" -lt 128 ]; do
    for f in tests/fixtures/photos/gallery/*.jpg tests/fixtures/photos/queries/*.jpg; do
        [ "$i" -lt 128 ] || break
        cp "$f" "$IMGS/$(printf %03d "$i").jpg"; i=$((i + 1))
    done
done

bench() { # EP LIB
    "$HTG" bench embed --model photo --backend ort --ep "$1" --ort-lib "$2" --require-gpu \
        --images "$IMGS" --limit 128 --batches 1,32,128 --seconds 3 --json "$OUT/embed-$1.json"
}
"$HTG" bench embed --model photo --backend ort --ort-lib "$CPU_LIB" --images "$IMGS" \
    --limit 128 --batches 1,32,128 --seconds 3 --json "$OUT/embed-cpu.json"
bench cuda "$GPU_LIB"
bench tensorrt "$GPU_LIB" || echo "gpu-check: TensorRT did not run (see above)"

# Embeddings on each provider, written as .npy by `htg bench dataset embed` (the photo
# fixtures, one class per subfolder), then compared.
embed() { # NAME ARGS...
    local name="$1"; shift
    "$HTG" bench dataset embed --model photo --backend ort --data tests/fixtures/photos \
        --holdout 1 --gt-depth 1 --out "$OUT/vec-$name" "$@"
}
embed cpu --ort-lib "$CPU_LIB"
embed cuda --ep cuda --ort-lib "$GPU_LIB" --require-gpu
embed tensorrt --ep tensorrt --ort-lib "$GPU_LIB" --require-gpu || true

python3 - "$OUT" <<'PY'
import json, os, struct, sys
out = sys.argv[1]

def npy(path):
    import numpy as np
    return np.load(path)

print("\nprovider   batch  images/s")
for ep in ("cpu", "cuda", "tensorrt"):
    p = os.path.join(out, f"embed-{ep}.json")
    if not os.path.exists(p):
        print(f"{ep:<10} (not run)"); continue
    rows = json.load(open(p))["rows"]
    for r in rows:
        print(f"{ep:<10} {r['batch']:>5}  {r['inference_images_per_s']:>9.1f}")
try:
    import numpy as np
except ImportError:
    sys.exit("numpy is needed for the embedding comparison (pip install numpy)")
cpu = np.concatenate([npy(os.path.join(out, "vec-cpu", f)) for f in ("base.npy", "queries.npy")])
for ep in ("cuda", "tensorrt"):
    d = os.path.join(out, f"vec-{ep}")
    if not os.path.exists(os.path.join(d, "base.npy")):
        print(f"{ep}: no embeddings"); continue
    gpu = np.concatenate([npy(os.path.join(d, f)) for f in ("base.npy", "queries.npy")])
    print(f"{ep}: max |gpu - cpu| over {len(cpu)} l2-normalised 1280-d embeddings = "
          f"{np.abs(gpu - cpu).max():.2e}")
PY
echo "gpu-check: done in $(( $(date +%s) - t0 )) s"
