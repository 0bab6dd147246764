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

ROOT=$(cd "$HERE/../.." && pwd)
# target : seed corpus (relative to the repo) : dictionary ("" for none)
TARGETS=(
  "fuzz_gguf:tests/fuzz/corpus/gguf:tests/fuzz/gguf.dict"
  "fuzz_safetensors:tests/fuzz/corpus/safetensors:tests/fuzz/safetensors.dict"
  "fuzz_json_config:tests/fuzz/corpus/json:tests/fuzz/json.dict"
  "fuzz_json_schema:tests/fuzz/corpus/json_schema:tests/fuzz/json_schema.dict"
  "fuzz_sp_model:tests/tokenizer/fuzz/corpus/sp_model:"
  "fuzz_chat_template:tests/tokenizer/fuzz/corpus/chat_template:"
  "fuzz_tokenizer_encode:tests/tokenizer/fuzz/corpus/tokenizer_encode:"
  "fuzz_gbnf:tests/fuzz/corpus/gbnf:"
  "fuzz_imatrix:tests/fuzz/corpus/imatrix:tests/fuzz/gguf.dict"
)

failed=()
for entry in "${TARGETS[@]}"; do
  IFS=: read -r target corpus dict <<<"$entry"
  exe=$BIN_DIR/$target
  if [[ ! -x $exe ]]; then
    echo "$target: not built at $exe" >&2
    failed+=("$target")
    continue
  fi
  scratch=$WORK/${target#fuzz_}
  mkdir -p "$scratch"
  dict_arg=()
  [[ -n $dict ]] && dict_arg=(-dict="$ROOT/$dict")
  echo "== $target: ${SECONDS_PER_TARGET}s on $corpus (log: $WORK/$target.log)"
  if "$exe" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 "${dict_arg[@]}" -artifact_prefix="$WORK/$target-" \
      "$scratch" "$ROOT/$corpus" >"$WORK/$target.log" 2>&1; then
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
