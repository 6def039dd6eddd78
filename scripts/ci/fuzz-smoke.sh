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
# FUZZ_BUILD_TIMEOUT (seconds) bounds the sanitizer build: a cold one takes about 27 minutes
# on 2 cores. Past the bound the finished crates stay cached, the next run continues from
# them, and this run says so and fuzzes nothing (exit 0): a resource limit, not a result.
# Only the time-out (timeout's status 124) is excused: a build that fails (a compile error,
# a full disk, a failed link) fails CI.
if [ -n "${FUZZ_BUILD_TIMEOUT:-}" ]; then
  status=0
  timeout "$FUZZ_BUILD_TIMEOUT" cargo fuzz build || status=$?
  if [ "$status" -eq 124 ]; then
    echo "fuzz: NOT RUN: the sanitizer build did not finish within ${FUZZ_BUILD_TIMEOUT} s (cold cache); its progress is cached and the next run continues"
    exit 0
  elif [ "$status" -ne 0 ]; then
    echo "fuzz: FAILED: the sanitizer build exited with status $status (not a time-out)"
    exit 1
  fi
else
  cargo fuzz build
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
# Each clone at a new path links every target anew (about 0.5 GB each) beside the old ones.
# The binaries this build made are hard-linked from release/; the other copies in deps/ are
# leftovers of earlier clones and go, so a cached target directory does not fill the disk.
deps="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/deps"
for t in "${targets[@]}"; do
  find "$deps" -maxdepth 1 -type f -name "$t-*" -links 1 -executable -delete 2>/dev/null || true
done
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
