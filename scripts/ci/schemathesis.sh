#!/usr/bin/env bash
# schemathesis.sh — API conformance of a live `htg serve` against its own /openapi.json with
# schemathesis (pinned, in its own venv), a fixed seed and a bounded number of examples.
# Exits non-zero on any failure. Used by .ci/run; see docs/RELIABILITY.md.
#
# Usage: scripts/ci/schemathesis.sh [MAX_EXAMPLES] [SEED]   (defaults 25 and 20261129)
# ST_PHASES picks the phases (default examples,coverage,fuzzing: about a minute here; the
# coverage phase sends boundary and pattern-violating values for every parameter).
# Needs: a built htg (cargo build), python3 with venv. HTG_BIN overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
MAX_EXAMPLES="${1:-25}"
PHASES="${ST_PHASES:-examples,coverage,fuzzing}"
SEED="${2:-20261129}"
ST_VERSION=4.32.5
CACHE="${HTG_CACHE_DIR:-$HOME/.cache/htg}"
VENV="$CACHE/schemathesis-venv"
H="${HTG_BIN:-${CARGO_TARGET_DIR:-target}/debug/htg}"

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$ST_VERSION"
fi

work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

"$H" index tests/fixtures/images --index "$work/idx" --model models/emoji.onnx >/dev/null
KEY="schemathesis-full-key-0123"
HTG__API_KEY="$KEY" HTG__READ_ONLY_API_KEY="schemathesis-read-key-0123" \
  "$H" serve --index "$work/idx" --addr 127.0.0.1:0 >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 1 300); do
  grep -q "listening on" "$work/out" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$work/err"; exit 1; }
  sleep 0.1
done
url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$work/out" | head -1)
[ -n "$url" ] || { echo "schemathesis: the server did not start"; cat "$work/err"; exit 1; }

# Checks left out, each for a reason (docs/RELIABILITY.md):
# - positive_data_acceptance: the schema says "binary" for image bodies; random bytes are
#   schema-valid but not an image, and the server rightly answers 400 `bad_image`.
# - use_after_free, ensure_resource_availability: need OpenAPI links between operations
#   (stateful phase), which this document does not declare.
# - object_level_authorization: one principal per key; there are no per-object owners.
# - negative_data_rejection on `POST /images` only: a multipart part has no type, so the
#   "schema-violating" form field `path = {}` reaches the server as the text `{}`, a valid
#   path. Every other operation keeps the check.
# Checks live in the config file, not on the command line, because command-line checks take
# precedence over a per-operation setting.
cat >"$work/schemathesis.toml" <<'TOML'
[checks]
positive_data_acceptance.enabled = false
use_after_free.enabled = false
ensure_resource_availability.enabled = false
object_level_authorization.enabled = false

[[operations]]
include-path = "/images"
include-method = "POST"
checks.negative_data_rejection.enabled = false
TOML
"$VENV/bin/st" --config-file "$work/schemathesis.toml" run "$url/openapi.json" \
  --header "api-key: $KEY" \
  --phases "$PHASES" \
  --seed "$SEED" --max-examples "$MAX_EXAMPLES" --workers 1 \
  --request-timeout 30 --suppress-health-check too_slow,filter_too_much \
  --report junit --report-dir "$work/report" \
  --no-color
echo "schemathesis: ok (phases $PHASES, seed $SEED, up to $MAX_EXAMPLES examples per operation)"
