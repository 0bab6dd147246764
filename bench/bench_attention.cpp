// Attention benchmarks on Mixtral 8x7B's shape (32 query heads, 8 kv heads, head_dim 128): paged attention
// over f32 / f16 / q8_0 caches in blocks of 16 (scattered, as a server's pool fills). (The contiguous f32
// kernel these replaced is gone; its figures on the same shapes are in docs/performance.md.)
//   Decode: one token at position 512, 4096 or 16384.   Prefill: 512 tokens after a cached prefix of 0
//   or 4096 positions.   At 1 and 2 threads.   Store: paged_kv_store of 1 or 512 new rows.
// Each call reads the next of several copies of the cache (the layers of a forward pass), together at
// least 128 MiB, so the rows come from DRAM as they do in a real step. "KV" counts the K and V bytes of
// the keys one token reads (decode) or of the keys the call reads once at least (prefill); a decode's
// KV/s against BM_ReadBandwidth (bench_kernels) is its fraction of the memory roofline.
// MIXTRAL_ISA=scalar|avx2|avx512 forces an instruction set. Types alternate with
//   mixtral_bench_attention --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/paged_attention.h"

namespace mixtral::kernels {
namespace {

constexpr int64_t kHeads = 32, kKvHeads = 8, kHeadDim = 128, kBlock = 16, kPrefill = 512;
constexpr size_t kColdBytes = size_t{128} << 20;

// Cache types benchmarked.
enum Kind { kPagedF32 = 0, kPagedF16 = 1, kPagedQ8_0 = 2 };
DType kind_type(int kind) {
  return kind == kPagedF16 ? DType::F16 : kind == kPagedQ8_0 ? DType::Q8_0 : DType::F32;
}
const char* kind_name(int kind) {
  static const char* const names[] = {"paged f32", "paged f16", "paged q8_0"};
  return names[kind];
}

std::vector<float> random_floats(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& f : x) f = u(rng);
  return x;
}

// n_copies copies of one layer's block pool for `ctx` positions (one shuffled table shared by the copies).
struct Cache {
  int kind = 0;
  int64_t ctx = 0, n_copies = 0;
  size_t copy_bytes = 0;       // bytes of K (or V) of one copy
  std::vector<uint8_t> k, v;   // [n_copies, copy_bytes]
  std::vector<int32_t> table;  // [ctx / kBlock]

  Cache(int kd, int64_t c) : kind(kd), ctx(c) {
    const int64_t n_blocks = (ctx + kBlock - 1) / kBlock;
    const DType t = kind_type(kind);
    copy_bytes = static_cast<size_t>(n_blocks * kBlock) * kv_row_bytes(t, kKvHeads, kHeadDim);
    n_copies = std::max<int64_t>(1, static_cast<int64_t>(kColdBytes / (2 * copy_bytes)));
    k.resize(static_cast<size_t>(n_copies) * copy_bytes);
    v.resize(k.size());
    const std::vector<float> kr = random_floats(n_blocks * kBlock * kKvHeads * kHeadDim, 1),
                             vr = random_floats(static_cast<int64_t>(kr.size()), 2);  // [slots, kv * hd]
    table.resize(static_cast<size_t>(n_blocks));
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(3));
    std::vector<int64_t> slots(static_cast<size_t>(n_blocks * kBlock));  // position j -> its slot
    for (int64_t j = 0; j < n_blocks * kBlock; ++j)
      slots[static_cast<size_t>(j)] = int64_t{table[static_cast<size_t>(j / kBlock)]} * kBlock + j % kBlock;
    paged_kv_store(paged(0), kr.data(), vr.data(), slots.data(), n_blocks * kBlock);
    for (int64_t c = 1; c < n_copies; ++c) {
      std::memcpy(k.data() + c * copy_bytes, k.data(), copy_bytes);
      std::memcpy(v.data() + c * copy_bytes, v.data(), copy_bytes);
    }
  }
  PagedKv paged(int64_t copy) {
    return PagedKv{k.data() + copy * copy_bytes,
                   v.data() + copy * copy_bytes,
                   kind_type(kind),
                   kBlock,
                   kKvHeads,
                   kHeadDim};
  }
};

// Caches are made once per (kind, capacity) and kept, so interleaved runs do not rebuild them.
Cache& cache_for(int kind, int64_t ctx) {
  static std::map<std::pair<int, int64_t>, std::unique_ptr<Cache>> caches;
  const int64_t cap = ctx <= 513 ? 513 : ctx <= 4608 ? 4608 : 16385;  // capacities shared by the cases
  auto& c = caches[{kind, cap}];
  if (!c) c = std::make_unique<Cache>(kind, cap);
  return *c;
}

// n queries at positions first .. first + n - 1 of one sequence.
void run_attention(benchmark::State& st, int kind, int64_t first, int64_t n, int threads) {
  Cache& c = cache_for(kind, first + n);
  ThreadPool pool(threads);
  const std::vector<float> q = random_floats(n * kHeads * kHeadDim, 4);  // [n, heads, hd]
  std::vector<float> out(q.size());                                      // [n, heads, hd]
  std::vector<int32_t> pos(static_cast<size_t>(n));
  std::iota(pos.begin(), pos.end(), static_cast<int32_t>(first));
  const std::vector<const int32_t*> tables(static_cast<size_t>(n), c.table.data());
  const AttentionParams p{kHeads, kKvHeads, kHeadDim, 0, 1.0f / std::sqrt(static_cast<float>(kHeadDim))};
  int64_t copy = 0;
  for (auto _ : st) {
    paged_attention(q.data(), c.paged(copy), tables.data(), pos.data(), n, p, out.data(), pool);
    benchmark::DoNotOptimize(out.data());
    copy = (copy + 1) % c.n_copies;
  }
  const double kv_bytes = 2.0 * static_cast<double>(first + n) *
                          static_cast<double>(kv_row_bytes(kind_type(kind), kKvHeads, kHeadDim));
  st.counters["KV"] = benchmark::Counter(kv_bytes * static_cast<double>(st.iterations()),
                                         benchmark::Counter::kIsRate, benchmark::Counter::kIs1024);
  st.counters["tok"] =
      benchmark::Counter(static_cast<double>(n * st.iterations()), benchmark::Counter::kIsRate);
  st.SetLabel(std::string(kind_name(kind)) + " " + isa_name(active_isa()));
}

// args: kind, position, threads
void BM_Decode(benchmark::State& st) {
  run_attention(st, static_cast<int>(st.range(0)), st.range(1), 1, static_cast<int>(st.range(2)));
}
// args: kind, cached prefix, threads
void BM_Prefill(benchmark::State& st) {
  run_attention(st, static_cast<int>(st.range(0)), st.range(1), kPrefill, static_cast<int>(st.range(2)));
}

// paged_kv_store of one step's new rows (args: cache kind, rows), into a cache of kPrefill positions.
void BM_Store(benchmark::State& st) {
  const int kind = static_cast<int>(st.range(0));
  const int64_t n = st.range(1);
  Cache& c = cache_for(kind, kPrefill);
  const std::vector<float> k = random_floats(n * kKvHeads * kHeadDim, 5), v = random_floats(k.size(), 6);
  std::vector<int64_t> slots(static_cast<size_t>(n));  // [n] positions 0 .. n - 1 of the sequence
  for (int64_t j = 0; j < n; ++j)
    slots[static_cast<size_t>(j)] = int64_t{c.table[static_cast<size_t>(j / kBlock)]} * kBlock + j % kBlock;
  for (auto _ : st) {
    paged_kv_store(c.paged(0), k.data(), v.data(), slots.data(), n);
    benchmark::ClobberMemory();
  }
  st.counters["rows"] =
      benchmark::Counter(static_cast<double>(n * st.iterations()), benchmark::Counter::kIsRate);
  st.SetLabel(kind_name(kind));
}

BENCHMARK(BM_Decode)
    ->ArgNames({"kind", "pos", "threads"})
    ->ArgsProduct({{kPagedF32, kPagedF16, kPagedQ8_0}, {512, 4096, 16384}, {1, 2}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(BM_Store)
    ->ArgNames({"kind", "rows"})
    ->ArgsProduct({{kPagedF32, kPagedF16, kPagedQ8_0}, {1, kPrefill}})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Prefill)
    ->ArgNames({"kind", "prefix", "threads"})
    ->ArgsProduct({{kPagedF32, kPagedF16, kPagedQ8_0}, {0, 4096}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace mixtral::kernels

BENCHMARK_MAIN();
