#!/usr/bin/env bash
# Runs every fuzz target for SECONDS on its seed corpus; fails if any target finds a crash, leak,
# timeout or sanitizer report.
#   tests/fuzz/run_smoke.sh build/fuzz/tests/fuzz 60
# New inputs go to a scratch copy of each corpus; findings are saved as $WORK/<target>-crash-* etc.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 DIR_OF_BUILT_FUZZERS SECONDS" >&2
  exit 2
fi
BIN_DIR=$1
SECONDS_PER_TARGET=$2
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${FUZZ_WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/mixtral-fuzz.XXXXXX")}
mkdir -p "$WORK"

failed=()
for pair in fuzz_gguf:gguf fuzz_safetensors:safetensors fuzz_json_config:json; do
  target=${pair%%:*}
  corpus=${pair#*:}
  exe=$BIN_DIR/$target
  if [[ ! -x $exe ]]; then
    echo "$target: not built at $exe" >&2
    failed+=("$target")
    continue
  fi
  mkdir -p "$WORK/$corpus"
  echo "== $target: ${SECONDS_PER_TARGET}s on corpus/$corpus (log: $WORK/$target.log)"
  if "$exe" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 -dict="$HERE/$corpus.dict" -artifact_prefix="$WORK/$target-" \
      "$WORK/$corpus" "$HERE/corpus/$corpus" >"$WORK/$target.log" 2>&1; then
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)|^Done " "$WORK/$target.log" || true
  else
    echo "$target: FAILED, see $WORK/$target.log and $WORK/$target-*" >&2
    tail -n 30 "$WORK/$target.log" >&2
    failed+=("$target")
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz smoke failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz smoke passed"
