#!/usr/bin/env bash
# fuzz-smoke.sh — runs every cargo-fuzz target (fuzz/) for a bounded time, starting from its
# committed seed corpus, and fails on the first crash, leak, timeout or out-of-memory.
# libFuzzer's new inputs go to a scratch directory, so the committed corpora stay as they are.
#
# Usage: scripts/ci/fuzz-smoke.sh [SECONDS_PER_TARGET] [TARGET...]   (default 20 s, all)
# Longer runs: RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/corpus/<target> -- -max_total_time=3600
# (from fuzz/). The stable toolchain runs cargo-fuzz with RUSTC_BOOTSTRAP=1 (it needs -Z flags).
set -euo pipefail
cd "$(dirname "$0")/../.."
EACH="${1:-20}"
shift || true
CARGO_FUZZ_VERSION=0.13.1
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
export RUSTC_BOOTSTRAP=1
# Sanitizer builds go to their own directory: they share nothing with the normal build.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/fuzz}"
cd fuzz
cargo fuzz build
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
summary=()
for t in "${targets[@]}"; do
  scratch=$(mktemp -d)
  log="$scratch/log"
  if ! cargo fuzz run "$t" "$scratch" "corpus/$t" -- -max_total_time="$EACH" -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -60 "$log"
    echo "fuzz: $t FAILED; the input is under fuzz/artifacts/$t/"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  corpus=$(ls "$scratch" | grep -vc '^log$' || true)
  seeds=$(ls "corpus/$t" | wc -l)
  summary+=("$t: ${runs:-?} executions in ${EACH} s, ${seeds} seeds, ${corpus} new corpus entries, no crash")
  rm -rf "$scratch"
done
printf 'fuzz: %s\n' "${summary[@]}"
