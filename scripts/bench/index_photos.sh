#!/usr/bin/env bash
# index_photos.sh — `htg index` of a folder of 12-megapixel JPEGs beside a Python peer doing the
# same work (PIL with draft(), i.e. libjpeg's DCT scaling, + onnxruntime; benches/peers/
# index_photos.py), same model (models/photo.onnx), same threads, one run after the other,
# alternating for ROUNDS rounds. Reports images/s and peak RSS of each, and the decode cost per
# photo with and without DCT scaling.
#
# Usage: scripts/bench/index_photos.sh DIR [THREADS=2] [ROUNDS=2]
#   DIR: e.g. made by scripts/bench/make_photo_folder.py /tmp/photos500 <photos...>
# Needs: a built htg (HTG=path, default: $CARGO_TARGET_DIR/release/htg), ONNX Runtime
# (scripts/fetch-data.sh onnxruntime) and a venv with onnxruntime==1.31.1 numpy==2.2.6
# pillow==11.3.0 (PYTHON=path to its python).
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR="$1"; THREADS="${2:-2}"; ROUNDS="${3:-2}"
HTG="${HTG:-${CARGO_TARGET_DIR:-target}/release/htg}"
PY="${PYTHON:-python3}"
LIB="$(scripts/fetch-data.sh onnxruntime | grep libonnxruntime | head -1)"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
n=$(find "$DIR" -iname '*.jpg' | wc -l)
echo "photos: $n in $DIR; threads $THREADS; htg $("$HTG" --version 2>/dev/null || echo)"
# Read every file once first, so neither side pays for a cold page cache (the first to run
# would otherwise read from disk for both).
find "$DIR" -iname '*.jpg' -exec cat {} + > /dev/null
for r in $(seq 1 "$ROUNDS"); do
    rm -rf "$TMP/idx"
    /usr/bin/time -f "%e %M" -o "$TMP/time" env RAYON_NUM_THREADS="$THREADS" "$HTG" index "$DIR" \
        --index "$TMP/idx" --model photo --backend ort --ort-lib "$LIB" --threads "$THREADS" \
        > "$TMP/out" 2> "$TMP/err"
    read -r secs rss < "$TMP/time"
    grep -h "images/s" "$TMP/err" | tail -1 || true
    echo "round $r htg-index: $n images in $secs s = $(echo "$n / $secs" | bc -l | xargs printf %.2f) images/s, peak RSS $(( rss / 1024 )) MiB"
    /usr/bin/time -f "%e %M" -o "$TMP/time" "$PY" benches/peers/index_photos.py "$DIR" \
        --model models/photo.onnx --threads "$THREADS" > "$TMP/peer"
    read -r secs rss < "$TMP/time"
    echo "round $r peer: $(cat "$TMP/peer") (wall $secs s, peak RSS $(( rss / 1024 )) MiB)"
done
