#!/usr/bin/env bash
# fetch-models.sh — fetch real external ONNX models that ship inside PyPI packages, for testing
# that any ONNX image model embeds on both backends (tract and ort) with only a manifest.
#
# Usage: scripts/fetch-models.sh [<name>...]
#   names: nudenet | rapidocr-cls | onnx-light | all (default: all)
#
# Environment:
#   HTG_CACHE_DIR  download cache and models (default: $HOME/.cache/htg)
#
# Every package file is checked against a pinned sha256; a mismatch is an error. Wheels are
# kept in $HTG_CACHE_DIR/downloads (shared with fetch-data.sh), so re-runs download nothing, and
# a model folder already made from the pinned wheel is left alone. The committed manifests in
# models/external/<model>.json are (re)copied beside each model on every run.
#
# Result layout (prints one "<name>: ok (<dir>)" line per model set):
#   nudenet       $HTG_CACHE_DIR/models/nudenet/320n.onnx (+ 320n.json)
#                 trained YOLOv8n detector, input `images` [N,3,H,W], output [N,22,anchors]
#                 source: PyPI nudenet 3.4.2 wheel, nudenet/320n.onnx
#   rapidocr-cls  $HTG_CACHE_DIR/models/rapidocr-cls/ch_ppocr_mobile_v2.0_cls_infer.onnx (+ .json)
#                 trained text-direction classifier, input `x` [N,3,48,192] BGR, output [N,2]
#                 source: PyPI rapidocr-onnxruntime 1.4.4 wheel, rapidocr_onnxruntime/models/
#   onnx-light    $HTG_CACHE_DIR/models/onnx-light/light_<net>.onnx (+ .json, _output_0.pb)
#                 untrained layout models with constant weights (op coverage and parity only);
#                 <net> in resnet50 densenet121 inception_v1 squeezenet shufflenet vgg19
#                 source: PyPI onnx 1.23.2 wheel, onnx/backend/test/data/light/
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${HTG_CACHE_DIR:-$HOME/.cache/htg}"
DL_DIR="$CACHE_DIR/downloads"
MODELS_DIR="$CACHE_DIR/models"
MANIFESTS="$REPO_DIR/models/external"

# ---- pinned package files and checksums -------------------------------------------------------
NUDENET_FILE="nudenet-3.4.2-py3-none-any.whl"
NUDENET_SHA256=5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331
RAPIDOCR_FILE="rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
RAPIDOCR_SHA256=971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf
ONNX_FILE="onnx-1.23.2-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
ONNX_SHA256=c03ecf6b835d136108eeaeeafbd0026fc7b3cf98661409fbc6b63d5a29361348
LIGHT_NETS=(resnet50 densenet121 inception_v1 squeezenet shufflenet vgg19)

log() { echo "fetch-models: $*" >&2; }
die() { echo "fetch-models: error: $*" >&2; exit 1; }

pip_cmd() {
    if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
        python3 -m pip "$@"
    elif command -v pip3 >/dev/null 2>&1; then
        pip3 "$@"
    else
        die "pip is needed (python3 -m pip or pip3)"
    fi
}

verify() {
    local file="$1" want="$2" got
    got="$(sha256sum "$file" | cut -d' ' -f1)"
    [[ "$got" == "$want" ]] || die "checksum mismatch for $file
  expected sha256 $want
  got      sha256 $got
Delete the file to download it again; if the mismatch persists the package changed upstream."
}

# ensure_wheel FILE SHA256 REQUIREMENT [pip args...]: download FILE unless cached, then verify.
ensure_wheel() {
    local file="$1" sha="$2" req="$3"; shift 3
    mkdir -p "$DL_DIR"
    if [[ ! -f "$DL_DIR/$file" ]]; then
        log "downloading $file"
        (cd "$DL_DIR" && pip_cmd download --quiet --no-deps --only-binary=:all: "$@" -d . "$req") >&2 \
            || die "download of $req failed"
        [[ -f "$DL_DIR/$file" ]] || die "download of $req did not produce $DL_DIR/$file"
    fi
    verify "$DL_DIR/$file" "$sha"
}

# extract WHEEL DIR STAMP MEMBER...: unzip MEMBERs (flattened) into DIR unless DIR holds STAMP.
extract() {
    local wheel="$1" dir="$2" stamp="$3"; shift 3
    if [[ -f "$dir/.fetched" && "$(cat "$dir/.fetched")" == "$stamp" ]]; then
        return 0
    fi
    command -v unzip >/dev/null 2>&1 || die "unzip is needed"
    local tmp="$dir.tmp.$$"
    rm -rf "$tmp"; mkdir -p "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    unzip -q -j -o "$DL_DIR/$wheel" "$@" -d "$tmp" || die "extracting from $wheel failed"
    echo "$stamp" > "$tmp/.fetched"
    rm -rf "$dir"; mv "$tmp" "$dir"
    trap - EXIT
}

# manifest DIR MODEL: copy the committed manifest of MODEL (no extension) beside it.
manifest() {
    local src="$MANIFESTS/$2.json"
    [[ -f "$src" ]] || die "missing manifest $src"
    cp "$src" "$1/$2.json"
}

fetch_nudenet() {
    local dir="$MODELS_DIR/nudenet"
    ensure_wheel "$NUDENET_FILE" "$NUDENET_SHA256" "nudenet==3.4.2"
    extract "$NUDENET_FILE" "$dir" "$NUDENET_SHA256" "nudenet/320n.onnx"
    manifest "$dir" 320n
    echo "nudenet: ok ($dir)"
}

fetch_rapidocr_cls() {
    local dir="$MODELS_DIR/rapidocr-cls"
    ensure_wheel "$RAPIDOCR_FILE" "$RAPIDOCR_SHA256" "rapidocr-onnxruntime==1.4.4"
    extract "$RAPIDOCR_FILE" "$dir" "$RAPIDOCR_SHA256" \
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
    manifest "$dir" ch_ppocr_mobile_v2.0_cls_infer
    echo "rapidocr-cls: ok ($dir)"
}

fetch_onnx_light() {
    local dir="$MODELS_DIR/onnx-light" members=() n
    ensure_wheel "$ONNX_FILE" "$ONNX_SHA256" "onnx==1.23.2" \
        --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311
    for n in "${LIGHT_NETS[@]}"; do
        members+=("onnx/backend/test/data/light/light_$n.onnx"
                  "onnx/backend/test/data/light/light_${n}_output_0.pb")
    done
    extract "$ONNX_FILE" "$dir" "$ONNX_SHA256 ${LIGHT_NETS[*]}" "${members[@]}"
    for n in "${LIGHT_NETS[@]}"; do manifest "$dir" "light_$n"; done
    echo "onnx-light: ok ($dir)"
}

names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(all)
for name in "${names[@]}"; do
    case "$name" in
        all) fetch_nudenet; fetch_rapidocr_cls; fetch_onnx_light ;;
        nudenet) fetch_nudenet ;;
        rapidocr-cls) fetch_rapidocr_cls ;;
        onnx-light) fetch_onnx_light ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) die "unknown name '$name' (nudenet | rapidocr-cls | onnx-light | all)" ;;
    esac
done
