// Kernel benchmarks. Decode mat-vecs report bytes/s of weights streamed (compare with BM_ReadBandwidth,
// the machine's own streaming-read roofline); prefill matmuls and attention report FLOP/s.
// Weights are replicated over >= 256 MiB and rotated per iteration so every call reads them from DRAM,
// as in a real forward pass. MIXTRAL_ISA=scalar|avx2|avx512 forces an instruction set. Paged attention per
// cache type: bench_attention.cpp.
//
//   mixtral_bench_kernels --benchmark_filter=Decode
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/huge_pages.h"
#include "core/membw.h"
#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "tensor/quant.h"

namespace mixtral::kernels {
namespace {

constexpr size_t kColdBytes = size_t{256} << 20;

// Random bytes that decode to sane values: fp16 / bf16 in about [-1, 1], block scales 2^-8.
void fill_weights(DType t, uint8_t* p, size_t nbytes, uint64_t seed) {
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
  auto next = [&] {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  };
  for (size_t i = 0; i + 8 <= nbytes; i += 8) {
    const uint64_t v = next();
    std::memcpy(p + i, &v, 8);
  }
  if (t == DType::F16 || t == DType::BF16) {
    auto* h = reinterpret_cast<uint16_t*>(p);
    const uint16_t keep = t == DType::F16 ? 0x83ff : 0x807f, one = t == DType::F16 ? 0x3800 : 0x3f00;
    for (size_t i = 0; i < nbytes / 2; ++i) h[i] = static_cast<uint16_t>((h[i] & keep) | one);
  } else if (t == DType::F32) {
    auto* f = reinterpret_cast<uint32_t*>(p);
    for (size_t i = 0; i < nbytes / 4; ++i) f[i] = (f[i] & 0x807fffffu) | 0x3f000000u;
  } else if (file_layout(t) != t) {  // as stored, then repacked as the loader does
    const DType file = file_layout(t);
    fill_weights(file, p, nbytes, seed);
    // As rows of one G8 group or one block (R16: whole groups of 16 such rows).
    const int64_t cols = row_group(t) == 1 ? traits(t).block_size : traits(file).block_size;
    const int64_t rows = static_cast<int64_t>(nbytes / row_bytes(t, cols)) / row_group(t) * row_group(t);
    repack(file, t, p, p, rows, cols);
  } else {
    const size_t bb = traits(t).block_bytes;
    for (size_t b = 0; b + bb <= nbytes; b += bb) {
      const uint16_t d = f32_to_fp16(1.0f / 256);
      std::memcpy(p + b, &d, 2);
    }
  }
}

// Enough copies of a [rows, cols] weight matrix to exceed the caches (or one, `hot`: a matrix that fits
// in L2 then measures the kernel's own speed, the ceiling memory cannot raise); view(i) rotates through
// them. On huge pages, as the model's weights are (model/loader.cpp place_weights).
struct ColdWeights {
  ColdWeights(DType t, int64_t rows, int64_t cols, bool hot = false) {
    one.dtype = t;
    one.ndim = 2;
    one.shape = {rows, cols, 1, 1};
    bytes = one.nbytes();
    copies = hot ? 1 : std::max<size_t>(1, (kColdBytes + bytes - 1) / bytes);
    data = alloc_huge_pages(bytes * copies);
    for (size_t c = 0; c < copies; ++c) fill_weights(t, data.get() + c * bytes, bytes, c + 1);
  }
  TensorView view(size_t i) const {
    TensorView v = one;
    v.data = data.get() + (i % copies) * bytes;
    return v;
  }
  TensorView one;
  size_t bytes = 0, copies = 0;
  std::shared_ptr<uint8_t> data;
};

std::vector<float> randn(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

// args: dtype, rows, cols, threads
void matmul_decode(benchmark::State& st, bool hot) {
  const auto t = static_cast<DType>(st.range(0));
  const int64_t rows = st.range(1), cols = st.range(2);
  ThreadPool pool(static_cast<int>(st.range(3)));
  const ColdWeights w(t, rows, cols, hot);
  const std::vector<float> x = randn(cols, 1);      // [1, cols]
  std::vector<float> y(static_cast<size_t>(rows));  // [1, rows]
  size_t i = 0;
  for (auto _ : st) {
    matmul(w.view(i++), x.data(), 1, y.data(), rows, pool);
    benchmark::DoNotOptimize(y.data());
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * w.bytes));
  st.SetLabel(std::string(dtype_name(t)) + " " + isa_name(active_isa()));
}
void BM_MatmulDecode(benchmark::State& st) {
  matmul_decode(st, false);
}
void BM_MatmulDecodeHot(benchmark::State& st) {
  matmul_decode(st, true);
}

// args: dtype, rows, cols, n, threads
void BM_MatmulPrefill(benchmark::State& st) {
  const auto t = static_cast<DType>(st.range(0));
  const int64_t rows = st.range(1), cols = st.range(2), n = st.range(3);
  ThreadPool pool(static_cast<int>(st.range(4)));
  const ColdWeights w(t, rows, cols);
  const std::vector<float> x = randn(n * cols, 2);      // [n, cols]
  std::vector<float> y(static_cast<size_t>(n * rows));  // [n, rows]
  size_t i = 0;
  for (auto _ : st) {
    matmul(w.view(i++), x.data(), n, y.data(), rows, pool);
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["FLOP/s"] =
      benchmark::Counter(2.0 * static_cast<double>(rows * cols * n) * static_cast<double>(st.iterations()),
                         benchmark::Counter::kIsRate);
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * w.bytes));
  st.SetLabel(std::string(dtype_name(t)) + " " + isa_name(active_isa()));
}

// The same with weights that stay in L2 (one small matrix, reused): the arithmetic ceiling of a kernel,
// without DRAM. args: dtype, rows, cols, n
void BM_MatmulHot(benchmark::State& st) {
  const auto t = static_cast<DType>(st.range(0));
  const int64_t rows = st.range(1), cols = st.range(2), n = st.range(3);
  ThreadPool pool(1);
  ColdWeights w(t, rows, cols);
  const std::vector<float> x = randn(n * cols, 2);      // [n, cols]
  std::vector<float> y(static_cast<size_t>(n * rows));  // [n, rows]
  for (auto _ : st) {
    matmul(w.view(0), x.data(), n, y.data(), rows, pool);
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["FLOP/s"] =
      benchmark::Counter(2.0 * static_cast<double>(rows * cols * n) * static_cast<double>(st.iterations()),
                         benchmark::Counter::kIsRate);
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * w.bytes));
  st.SetLabel(std::string(dtype_name(t)) + " " + isa_name(active_isa()));
}

// Mixtral 8x7B expert FFN up-projection, fused: args dtype, n, threads
void BM_SwigluDecode(benchmark::State& st) {
  const auto t = static_cast<DType>(st.range(0));
  const int64_t n = st.range(1), ffn = 14336, dim = 4096;
  ThreadPool pool(static_cast<int>(st.range(2)));
  const ColdWeights w1(t, ffn, dim), w3(t, ffn, dim);
  const std::vector<float> x = randn(n * dim, 3);        // [n, dim]
  std::vector<float> out(static_cast<size_t>(n * ffn));  // [n, ffn]
  size_t i = 0;
  for (auto _ : st) {
    matmul_swiglu(w1.view(i), w3.view(i + 1), x.data(), n, out.data(), pool);
    i += 2;
    benchmark::DoNotOptimize(out.data());
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * 2 * w1.bytes));
  st.SetLabel(std::string(dtype_name(t)) + " " + isa_name(active_isa()));
}

// The streaming-read roofline: each thread reads its part of a cold buffer as 3 interleaved sequential
// streams with software prefetch (core/membw.h: the pattern that reads fastest here, as in `mixtral
// bench`'s probe).
void BM_ReadBandwidth(benchmark::State& st) {
  ThreadPool pool(static_cast<int>(st.range(0)));
  const size_t n = kColdBytes / 8;
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);  // [n] 256 MiB
  for (size_t i = 0; i < n; ++i) buf[i] = i;
  std::vector<uint64_t> sums(static_cast<size_t>(pool.size()));  // [threads]
  for (auto _ : st) {
    pool.run([&](int ith, int nth) {
      const size_t b = n * ith / nth, e = n * (ith + 1) / nth;
      sums[ith] = read_streams(buf.get() + b, e - b, 3, true);
    });
    benchmark::DoNotOptimize(sums.data());
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * n * 8));
}

constexpr int64_t kQ8 = static_cast<int64_t>(DType::Q8_0), kQ4 = static_cast<int64_t>(DType::Q4_0),
                  kF16 = static_cast<int64_t>(DType::F16), kBF16 = static_cast<int64_t>(DType::BF16),
                  kQ4K = static_cast<int64_t>(DType::Q4_K), kQ5K = static_cast<int64_t>(DType::Q5_K),
                  kQ6K = static_cast<int64_t>(DType::Q6_K), kQ4G8 = static_cast<int64_t>(DType::Q4_0_G8),
                  kQ8G8 = static_cast<int64_t>(DType::Q8_0_G8),
                  kQ4R16 = static_cast<int64_t>(DType::Q4_0_R16),
                  kQ8R16 = static_cast<int64_t>(DType::Q8_0_R16),
                  kQ4KR16 = static_cast<int64_t>(DType::Q4_K_R16),
                  kQ6KR16 = static_cast<int64_t>(DType::Q6_K_R16),
                  kIQ4NL = static_cast<int64_t>(DType::IQ4_NL), kIQ4XS = static_cast<int64_t>(DType::IQ4_XS),
                  kIQ2XXS = static_cast<int64_t>(DType::IQ2_XXS),
                  kIQ2XS = static_cast<int64_t>(DType::IQ2_XS), kIQ2S = static_cast<int64_t>(DType::IQ2_S),
                  kIQ3XXS = static_cast<int64_t>(DType::IQ3_XXS), kIQ3S = static_cast<int64_t>(DType::IQ3_S),
                  kIQ1S = static_cast<int64_t>(DType::IQ1_S), kIQ1M = static_cast<int64_t>(DType::IQ1_M);

BENCHMARK(BM_ReadBandwidth)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

BENCHMARK(BM_MatmulDecode)
    ->ArgNames({"dtype", "rows", "cols", "threads"})
    ->ArgsProduct({{kQ8,  kQ8G8, kQ8R16, kQ4,    kQ4G8,   kQ4R16, kQ4K,  kQ4KR16, kQ5K,  kQ6K,  kQ6KR16,
                    kF16, kBF16, kIQ4NL, kIQ4XS, kIQ2XXS, kIQ2XS, kIQ2S, kIQ3XXS, kIQ3S, kIQ1S, kIQ1M},
                   {14336},
                   {4096},
                   {1, 2}})
    ->ArgsProduct({{kQ8,  kQ8G8, kQ8R16, kQ4,    kQ4G8,   kQ4R16, kQ4K,  kQ4KR16, kQ5K,  kQ6K,  kQ6KR16,
                    kF16, kBF16, kIQ4NL, kIQ4XS, kIQ2XXS, kIQ2XS, kIQ2S, kIQ3XXS, kIQ3S, kIQ1S, kIQ1M},
                   {4096},
                   {14336},
                   {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
// The same kernels on 256 x 4096 weights that stay in L2: bytes/s above the read bandwidth say a kernel
// can keep up with memory, and by how much.
BENCHMARK(BM_MatmulDecodeHot)
    ->ArgNames({"dtype", "rows", "cols", "threads"})
    ->ArgsProduct({{kQ8,  kQ8G8, kQ8R16, kQ4,    kQ4G8,   kQ4R16, kQ4K,  kQ4KR16, kQ5K,  kQ6K,  kQ6KR16,
                    kF16, kBF16, kIQ4NL, kIQ4XS, kIQ2XXS, kIQ2XS, kIQ2S, kIQ3XXS, kIQ3S, kIQ1S, kIQ1M},
                   {256},
                   {4096},
                   {1}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

BENCHMARK(BM_SwigluDecode)
    ->ArgNames({"dtype", "n", "threads"})
    ->ArgsProduct({{kQ8, kQ4}, {1}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Small batches, as a serving step's per-expert groups: weights streamed (bytes/s) and FLOP/s.
BENCHMARK(BM_MatmulPrefill)
    ->Name("BM_MatmulSmallBatch")
    ->ArgNames({"dtype", "rows", "cols", "n", "threads"})
    ->ArgsProduct({{kQ4, kQ4G8, kQ4R16, kQ4K, kQ4KR16, kQ6K, kQ6KR16, kQ8, kQ8G8, kQ8R16, kIQ4NL, kIQ4XS,
                    kIQ2XXS, kIQ2XS, kIQ2S, kIQ3XXS, kIQ3S, kIQ1S, kIQ1M},
                   {14336},
                   {4096},
                   {1, 2, 3, 4, 5, 6, 8, 12, 16},
                   {1, 2}})
    ->ArgsProduct(
        {{kQ4K, kQ4KR16, kQ6K, kQ6KR16}, {4096}, {14336}, {1, 2, 3, 4, 5, 6, 8, 12, 16}, {1, 2}})  // W2
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_MatmulHot)
    ->ArgNames({"dtype", "rows", "cols", "n"})
    ->ArgsProduct({{kQ4, kQ4G8, kQ4R16, kQ4K, kQ4KR16, kQ6K, kQ6KR16, kQ8, kQ8G8, kQ8R16, kIQ4NL, kIQ4XS,
                    kIQ2XXS, kIQ2XS, kIQ2S, kIQ3XXS, kIQ3S, kIQ1S, kIQ1M},
                   {512},
                   {4096},
                   {2, 3, 4, 6, 8, 12, 64}})
    ->ArgsProduct({{kQ4, kQ4G8, kQ4R16, kQ4K, kQ8, kQ8G8, kQ8R16, kQ6K, kIQ4NL, kIQ4XS, kIQ2XXS, kIQ2XS,
                    kIQ2S, kIQ3XXS, kIQ3S, kIQ1S, kIQ1M},
                   {256, 2048},
                   {4096},
                   {1}});
BENCHMARK(BM_MatmulPrefill)
    ->ArgNames({"dtype", "rows", "cols", "n", "threads"})
    ->ArgsProduct({{kQ8, kQ8G8, kQ8R16, kQ4, kQ4G8, kQ4R16, kQ4K, kQ4KR16, kQ6K, kQ6KR16, kIQ4NL, kIQ4XS,
                    kIQ2XXS, kIQ2XS, kIQ2S, kIQ3XXS, kIQ3S, kIQ1S, kIQ1M},
                   {14336},
                   {4096},
                   {64, 512},
                   {1, 2}})
    ->ArgsProduct({{kQ4G8, kQ4R16, kQ4K, kQ4KR16, kQ6K, kQ6KR16},
                   {4096},
                   {14336},
                   {128},
                   {1, 2}})  // an expert's W2, its tokens
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace mixtral::kernels

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("kernels_isa", mixtral::kernels::isa_name(mixtral::kernels::active_isa()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
