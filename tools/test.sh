#!/usr/bin/env bash
# Installs what the tests need (tools/install-deps.sh: only what is missing), builds, and runs the tests.
#   tools/test.sh                every test (tiers unit, reference, e2e) in build/release
#   tools/test.sh --quick        the unit tier only (the C++ gtests, seconds): the local loop
#   tools/test.sh --tier TIER    one tier: unit, reference or e2e (tiers: tests/CMakeLists.txt)
#   tools/test.sh --sanitize     the same under ASan+UBSan in build/sanitize (combines with the others)
# Arguments after -- go to ctest as they are (e.g. -- -R kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
preset=release
tier=""
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize) preset=sanitize ;;
    --quick) tier=unit ;;
    --tier)
      tier="${2:-}"
      shift
      case "$tier" in unit | reference | e2e) ;; *) echo "tools/test.sh: --tier takes unit, reference or e2e" >&2; exit 2 ;; esac ;;
    --) shift; break ;;
    *) echo "tools/test.sh: unknown argument $1 (--quick, --tier TIER, --sanitize, -- CTEST_ARGS)" >&2; exit 2 ;;
  esac
  shift
done
bash tools/install-deps.sh
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j "$(nproc)"
ctest --preset "$preset" -j "$(nproc)" ${tier:+-L "^${tier}\$"} "$@"
