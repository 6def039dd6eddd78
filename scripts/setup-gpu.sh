#!/usr/bin/env bash
# setup-gpu.sh — install ONNX Runtime with its CUDA and TensorRT providers, and the CUDA 13 /
# cuDNN 9 (/ TensorRT 10) libraries they need, from PyPI wheels into a cache, for
# `htg ... --backend ort --ep cuda|tensorrt` (binary built with `--features cuda` or `tensorrt`).
#
# Usage: scripts/setup-gpu.sh [--no-tensorrt]
#
# Environment:
#   HTG_CACHE_DIR  download cache and libs (default: $HOME/.cache/htg)
#
# Result: $HTG_CACHE_DIR/gpu/lib/ holds libonnxruntime.so.1.31.1, the provider libraries and
# symlinks to every CUDA / cuDNN / TensorRT library, so one folder is all htg needs. htg uses
# that library by default for --ep cuda|tensorrt and preloads the others from the same folder
# (no LD_LIBRARY_PATH). The script prints the library path last.
#
# The NVIDIA driver (libcuda.so.1) is not on PyPI: it must come with the machine.
#
# Every pinned wheel is checked against its sha256. Wheels are kept in
# $HTG_CACHE_DIR/downloads and the unpacked result is stamped, so a second run does nothing.
#
# TensorRT: the TensorRT 10 libraries (tensorrt-cu13-libs<11; ONNX Runtime 1.31 links
# libnvinfer.so.10) are published on PyPI only as a placeholder source package that downloads
# the real wheel from NVIDIA's own index. Where that index is reachable they are installed too;
# elsewhere the script warns and carries on without them, and `--ep tensorrt` falls back (to CPU,
# with the reason) until libnvinfer.so.10 and friends are put into gpu/lib by hand.
set -euo pipefail

CACHE_DIR="${HTG_CACHE_DIR:-$HOME/.cache/htg}"
DL_DIR="$CACHE_DIR/downloads"
GPU_DIR="$CACHE_DIR/gpu"
ORT_VERSION=1.31.1
TRT_REQ='tensorrt-cu13-libs>=10,<11'

WITH_TRT=1
for arg in "$@"; do
    case "$arg" in
        --no-tensorrt) WITH_TRT=0 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "setup-gpu: unknown argument '$arg'" >&2; exit 2 ;;
    esac
done

# file sha256 requirement — one pinned wheel per line. onnxruntime-gpu's `cuda` and `cudnn`
# extras name the CUDA 13 packages; cuBLAS and nvJitLink come in through cuDNN and cuFFT.
WHEELS='
onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6 onnxruntime-gpu==1.31.1
nvidia_cuda_runtime-13.5.37-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl df2b79a8852f10d1fef8c848489c49eebb5754051bf870202a862831412b179d nvidia-cuda-runtime==13.5.37
nvidia_cuda_nvrtc-13.5.37-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl 86b4d68058807988b7d9af5b44917a0601e9c337f35ccd657bfb3c759ff8d8bc nvidia-cuda-nvrtc==13.5.37
nvidia_cublas-13.10.0.20-py3-none-manylinux1_x86_64.manylinux_2_5_x86_64.whl dcc6d63884c53d07e267ce7e6feac17b2538cebaafec5db865736c3e28e4dc84 nvidia-cublas==13.10.0.20
nvidia_nvjitlink-13.5.37-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl 280d7cb9649704145f074b8dbde500de04ce02d0872e066e20a83c17bcaa93eb nvidia-nvjitlink==13.5.37
nvidia_cufft-12.5.0.14-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl b8be26837a5abad2b5b74f3e92dd29f622a42934b355be0961a48712cbba23ad nvidia-cufft==12.5.0.14
nvidia_curand-10.4.5.25-py3-none-manylinux_2_27_x86_64.whl 22bb226a857e5888fe6b54ae465fc4371296bcff13a35f79e19691bcf454f529 nvidia-curand==10.4.5.25
nvidia_cudnn_cu13-9.28.1.4-py3-none-manylinux_2_27_x86_64.whl a54f205b1db1f2895d99f398754db1369816f0569dd459731f925635cf7b65ec nvidia-cudnn-cu13==9.28.1.4
'

log() { echo "setup-gpu: $*" >&2; }
die() { echo "setup-gpu: error: $*" >&2; exit 1; }

pip_cmd() {
    if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
        python3 -m pip "$@"
    elif command -v pip3 >/dev/null 2>&1; then
        pip3 "$@"
    else
        die "pip is needed (python3 -m pip or pip3)"
    fi
}

command -v unzip >/dev/null 2>&1 || die "unzip is needed"
mkdir -p "$DL_DIR"
# pip takes a --platform literally, so name every manylinux tag the pinned wheels carry.
PLATFORMS=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 \
         manylinux_2_5 manylinux1; do
    PLATFORMS+=(--platform "${p}_x86_64")
done

# The stamp names every pinned wheel, so changing a pin redoes the unpacking.
STAMP="$(echo "$WHEELS" | awk 'NF {print $2}' | sort | tr '\n' ' ')trt=$WITH_TRT"
LIB_DIR="$GPU_DIR/lib"
if [[ -f "$GPU_DIR/.fetched" && "$(cat "$GPU_DIR/.fetched")" == "$STAMP" \
      && -f "$LIB_DIR/libonnxruntime.so.$ORT_VERSION" ]]; then
    log "already set up"
    echo "$LIB_DIR/libonnxruntime.so.$ORT_VERSION"
    exit 0
fi

# Download (unless cached) and verify each pinned wheel.
while read -r file sha req; do
    [[ -n "$file" ]] || continue
    if [[ ! -f "$DL_DIR/$file" ]]; then
        log "downloading $req"
        (cd "$DL_DIR" && pip_cmd download --quiet --no-deps --only-binary=:all: \
            "${PLATFORMS[@]}" --python-version 3.11 --implementation cp \
            --abi cp311 -d . "$req") >&2 || die "download of $req failed"
        [[ -f "$DL_DIR/$file" ]] || die "download of $req did not produce $file"
    fi
    got="$(sha256sum "$DL_DIR/$file" | cut -d' ' -f1)"
    [[ "$got" == "$sha" ]] || die "checksum mismatch for $DL_DIR/$file: expected $sha, got $got (delete it to retry)"
done <<< "$WHEELS"

# Unpack into a staging folder beside the result, then swap it in.
TMP="$GPU_DIR.tmp.$$"
rm -rf "$TMP"; mkdir -p "$TMP/site" "$TMP/lib"
trap 'rm -rf "$TMP"' EXIT
while read -r file _ _; do
    [[ -n "$file" ]] || continue
    log "unpacking $file"
    unzip -q -o "$DL_DIR/$file" -d "$TMP/site" -x '*.dist-info/*'
done <<< "$WHEELS"

if [[ "$WITH_TRT" == 1 ]]; then
    log "installing $TRT_REQ (needs NVIDIA's package index, reached by its PyPI placeholder)"
    if ! pip_cmd install --quiet --no-deps --target "$TMP/site" "$TRT_REQ" > "$TMP/trt.log" 2>&1; then
        log "warning: TensorRT 10 libraries could not be installed ($(grep -m1 -o 'urlopen error [^>]*\|No matching distribution.*' "$TMP/trt.log" || tail -n1 "$TMP/trt.log"))."
        log "         --ep tensorrt will fall back. To enable it, put libnvinfer.so.10,"
        log "         libnvinfer_plugin.so.10 and libnvonnxparser.so.10 into $LIB_DIR"
        log "         (or delete $GPU_DIR/.fetched and rerun where NVIDIA's index is reachable)."
    fi
    rm -f "$TMP/trt.log"
fi

# One folder with every shared library (relative symlinks, so the cache can move).
n=0
while IFS= read -r -d '' so; do
    name="$(basename "$so")"
    case "$name" in *.cpython-*|*_pybind_state*) continue ;; esac
    ln -sf "../site/${so#"$TMP/site/"}" "$TMP/lib/$name"
    n=$((n + 1))
done < <(find "$TMP/site" -name '*.so*' -type f -print0)
[[ -f "$TMP/lib/libonnxruntime.so.$ORT_VERSION" ]] \
    || die "libonnxruntime.so.$ORT_VERSION is not in the onnxruntime-gpu wheel"
for need in libonnxruntime_providers_cuda.so libcudart.so.13 libcublas.so.13 libcudnn.so.9; do
    [[ -e "$TMP/lib/$need" ]] || die "$need is missing after unpacking"
done
log "linked $n libraries into $LIB_DIR"

echo "$STAMP" > "$TMP/.fetched"
rm -rf "$GPU_DIR"; mv "$TMP" "$GPU_DIR"
trap - EXIT
command -v nvidia-smi >/dev/null 2>&1 || log "note: no nvidia-smi here; the NVIDIA driver (libcuda.so.1) must be installed to use the GPU"
echo "$LIB_DIR/libonnxruntime.so.$ORT_VERSION"
