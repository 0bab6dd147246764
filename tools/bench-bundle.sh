#!/usr/bin/env bash
# Packs the kernel, MoE, runtime and repack tests, the kernel benchmarks and the CLI with the shared
# libraries they need (all but glibc's; libstdc++ travels, as the other machine's may be older) into one folder, with a run.sh that checks and times them on another x86-64
# machine of the same or a newer glibc: the way to measure the AVX-512 kernels from a machine without
# AVX-512.
#   tools/bench-bundle.sh [BUILD_DIR] [OUT_DIR]      (defaults: build/bench, .bench-bundle)
# then on the other machine, from the folder above OUT_DIR:   bash OUT_DIR/run.sh
# run.sh: kernel tests on the best ISA; per-ISA kernel benchmarks (prefill, small batches, decode); a
# 4-layer full-width test model in Q4_0, Q8_0 and Q4_K_M; `mixtral bench` on each at 1 and 2 threads.
# With taskset, benchmarks run on cores 4-5 and the model is written on cores 8-15 meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/bench}
out=${2:-.bench-bundle}
tests=(kernels/kernels_test model/repack_test moe/moe_test runtime/runtime_test)
bins=("$build/apps/cli/mixtral" "$build/bench/mixtral_bench_kernels" "${tests[@]/#/$build/tests/}")
for b in "${bins[@]}"; do
  [ -x "$b" ] || { echo "bench-bundle: $b is missing: cmake --preset bench && cmake --build --preset bench" >&2; exit 1; }
done
rm -rf "$out" && mkdir -p "$out/lib"
cp "${bins[@]}" "$out/"
ldd "${bins[@]}" | awk '/=> \// {print $3}' | sort -u |
  grep -vE '/(libc|libm|ld-linux[^/]*|libpthread|libdl|librt)\.so' |
  while read -r lib; do cp -L "$lib" "$out/lib/"; done
cat >"$out/run.sh" <<'EOF'
#!/usr/bin/env bash
set -o pipefail
B=$(cd "$(dirname "$0")" && pwd); export LD_LIBRARY_PATH=$B/lib
T0=$(date +%s); el() { echo "== $(($(date +%s) - T0)) s: $*"; }
TS=""; BG=""; if command -v taskset >/dev/null && [ "$(nproc)" -ge 16 ]; then TS="taskset -c 4,5"; BG="taskset -c 8-15"; fi
M=${MODEL_DIR:-/tmp/mixtral-bench-models}
el cpu; lscpu | grep -E 'Model name|^CPU\(s\)|MHz'; grep -o 'avx512[a-z_0-9]*\|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
for t in kernels_test repack_test moe_test runtime_test; do el "$t"; "$B/$t" --gtest_brief=1 2>&1 | tail -3; done
( $BG "$B/mixtral" make-test-model "$M" --dim 4096 --ffn 14336 --layers 4 --heads 32 --kv-heads 8 --experts 8 \
    --vocab 32000 --types q4_0,q8_0 --layouts gguf-merged >/dev/null 2>&1 &&
  $BG "$B/mixtral" quantize "$M/gguf-merged-q8_0.gguf" "$M/gguf-merged-q4_k_m.gguf" Q4_K_M >/dev/null 2>&1 ) &
K='BM_MatmulPrefill/dtype:(2|8|12|14|1000|1001)/.*n:512/threads:1|BM_MatmulSmallBatch/dtype:(2|8|12|1000|1001)/.*n:(4|16)/threads:1'
for isa in avx512 avx2; do
  el "kernels $isa"; MIXTRAL_ISA=$isa $TS "$B/mixtral_bench_kernels" --benchmark_filter="$K" --benchmark_min_time=0.2 2>&1 | grep '^BM_' | sed 's/  */ /g'
done
wait; el models
for isa in avx512 avx2; do
  el "decode $isa"; MIXTRAL_ISA=$isa $TS "$B/mixtral_bench_kernels" --benchmark_min_time=0.2 \
    --benchmark_filter='BM_ReadBandwidth|BM_MatmulDecode/dtype:(2|8|12|14|1000|1001)/rows:14336/.*threads:(1|2)' 2>&1 | grep '^BM_' | sed 's/  */ /g'
done
for f in q4_0 q8_0 q4_k_m; do for t in 1 2; do
  el "bench $f ${t}t"; $TS "$B/mixtral" bench --model "$M/gguf-merged-$f.gguf" -p 512 -n 32 -t $t -r 1 2>&1 | grep -E 'kernels|pp512|tg32|read bandwidth'
done; done
for f in q4_0 q8_0; do  # the file layout, for the repack's gain on this machine
  el "bench $f 1t --no-repack"; $TS "$B/mixtral" bench --model "$M/gguf-merged-$f.gguf" -p 512 -n 32 -t 1 -r 1 --no-repack 2>&1 | grep -E 'pp512|tg32|read bandwidth'
done
el done
EOF
chmod +x "$out/run.sh"
echo "bench-bundle: $out ($(du -sh "$out" | cut -f1)); run it there with: bash $out/run.sh"
