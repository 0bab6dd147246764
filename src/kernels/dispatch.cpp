// Run-time dispatch and the threaded drivers. The instruction set is chosen once (CPUID, or MIXTRAL_ISA)
// and picks a table of function pointers; the drivers here check arguments, prepare activations, split
// the work over the thread pool and call the table's kernels on tiles.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "core/check.h"
#include "kernels/internal.h"
#include "kernels/kernels.h"
#include "tensor/quant.h"

namespace mixtral::kernels {
namespace {

using detail::KernelTable;

#if defined(__x86_64__) || defined(__i386__)
// F16C straight from CPUID (leaf 1, ECX bit 29): clang's __builtin_cpu_supports has no "f16c".
bool cpu_has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
}
#endif

bool cpu_has(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kScalar:
      return true;
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    case Isa::kAvx512:
      // avx512dq as well: the compiler may use DQ forms (e.g. 256-bit extracts) in this file's code.
      return cpu_has(Isa::kAvx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vnni");
  }
  return false;
#else
  return isa == Isa::kScalar;
#endif
}

const KernelTable* table_of(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return detail::avx512_table();
    case Isa::kAvx2:
      return detail::avx2_table();
    case Isa::kScalar:
      break;
  }
  return &detail::generic_table();
}

bool usable(Isa isa) {
  return cpu_has(isa) && table_of(isa) != nullptr;
}

Isa clamp_isa(Isa want) {
  for (int i = static_cast<int>(want); i > 0; --i)
    if (usable(static_cast<Isa>(i))) return static_cast<Isa>(i);
  return Isa::kScalar;
}

struct Active {
  std::atomic<Isa> isa;
  std::atomic<const KernelTable*> table;
};

Active& active() {
  static Active* a = [] {
    Isa isa = detect_isa();
    if (const char* env = std::getenv("MIXTRAL_ISA"); env != nullptr && *env != '\0') {
      if (std::strcmp(env, "scalar") == 0) {
        isa = Isa::kScalar;
      } else if (std::strcmp(env, "avx2") == 0) {
        isa = clamp_isa(Isa::kAvx2);
      } else if (std::strcmp(env, "avx512") == 0) {
        isa = clamp_isa(Isa::kAvx512);
      } else {
        std::fprintf(stderr, "mixtral: MIXTRAL_ISA=%s is not one of scalar, avx2, avx512; using %s\n", env,
                     isa_name(isa));
      }
    }
    auto* s = new Active;
    s->isa.store(isa);
    s->table.store(table_of(isa));
    return s;
  }();
  return *a;
}

const KernelTable& table() {
  return *active().table.load(std::memory_order_relaxed);
}

// t's index in detail::kWeightTypes (its kernels' place in every table); -1: none (the fallback below).
int weight_index(DType t) {
  for (int i = 0; i < detail::kNumWeightTypes; ++i)
    if (detail::kWeightTypes[i].dtype == t) return i;
  return -1;
}

// Grows v to at least n elements (never shrinks: buffers are reused across calls).
template <class T>
T* grow(std::vector<T>& v, int64_t n) {
  if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
  return v.data();
}

// Runs rows(t0, t1) over tokens [0, n): in parallel when there is a pool (nullptr: on the calling thread,
// e.g. inside a parallel region) and several tokens with enough values.
template <class Fn>
void over_tokens(ThreadPool* pool, int64_t n, int64_t cols, const Fn& rows) {
  if (pool != nullptr && pool->size() > 1 && n >= 2 && n * cols >= (1 << 15)) {
    pool->run([&](int ith, int nth) { rows(n * ith / nth, n * (ith + 1) / nth); });
  } else {
    rows(0, n);
  }
}

// Tile j of the 8-token layout (tokens 8j .. 8j + 7 of n, zeros past n), in lanes of `lane` bytes (4 or
// 8), from the tokens' Q8_K rows.
//   xk: [n, nb]; out: [nb]
void interleave_q8_k(const BlockQ8_K* xk, int64_t n, int64_t nb, int64_t j, int lane, BlockQ8_KX8* out) {
  std::memset(static_cast<void*>(out), 0, sizeof(BlockQ8_KX8) * static_cast<size_t>(nb));
  for (int t = 0; t < kQ8KTokens && j * kQ8KTokens + t < n; ++t) {
    const BlockQ8_K* row = xk + (j * kQ8KTokens + t) * nb;
    for (int64_t b = 0; b < nb; ++b) {
      BlockQ8_KX8& o = out[b];
      o.d[t] = row[b].d;
      auto* qs = reinterpret_cast<int8_t*>(o.qs);  // [kQK_K / lane, 8 tokens, lane]
      for (int k = 0; k < kQK_K / lane; ++k)
        std::memcpy(qs + (k * kQ8KTokens + t) * lane, row[b].qs + lane * k, static_cast<size_t>(lane));
      for (int p = 0; p < kQK_K / 32; ++p) {
        o.bsums[p][t][0] = row[b].bsums[2 * p];
        o.bsums[p][t][1] = row[b].bsums[2 * p + 1];
      }
    }
  }
}

}  // namespace

// Finds or makes a PreparedInput's formats (the class keeps them; this is the code that knows the tables).
struct detail::PreparedAccess {
  using Format = PreparedInput::Format;

  // Whether weight type kWeightTypes[i] reads a quantized format under table k, and its key.
  static bool key_of(const KernelTable& k, int i, Format& key) {
    const Activations reads = kWeightTypes[i].reads;
    key.k_quant = reads == Activations::kQ8_K;
    key.tokens8 = 0;
    key.quantize = nullptr;
    key.arrange = nullptr;
    if (reads == Activations::kF32) return false;
    if (reads == Activations::kQ8_0) {
      key.quantize = k.quantize_q8;
      key.arrange = k.matmul[i].arrange;
    }
    return true;
  }

  static bool same_key(const Format& a, const Format& b) {
    return a.k_quant == b.k_quant && a.tokens8 == b.tokens8 && a.quantize == b.quantize &&
           a.arrange == b.arrange;
  }

  // The next free slot of in, keyed like key.
  static Format& new_slot(PreparedInput& in, const Format& key) {
    if (in.live_ == in.formats_.size()) in.formats_.emplace_back();
    Format& f = in.formats_[in.live_];
    f.k_quant = key.k_quant;
    f.tokens8 = key.tokens8;
    f.quantize = key.quantize;
    f.arrange = key.arrange;
    return f;
  }

  // The format `key` of in's rows: the cached one, or made now from the f32 rows (per row, in parallel over
  // tokens when there are several and a pool). The returned buffers stay put until in's next reset or
  // gather (a later slot's emplace_back moves Formats, not their vectors' storage).
  static const Format& get(PreparedInput& in, const Format& key, ThreadPool* pool) {
    for (size_t i = 0; i < in.live_; ++i)
      if (same_key(in.formats_[i], key)) return in.formats_[i];
    const int64_t n = in.n_, cols = in.cols_;
    if (key.tokens8) {  // a transposition of the Q8_K blocks (made first if need be)
      Format rows_key = key;
      rows_key.tokens8 = 0;
      const BlockQ8_K* xk = get(in, rows_key, pool).xk.data();  // stays put (see above)
      Format& f = new_slot(in, key);
      const int64_t nb = cols / kQK_K, tiles = (n + kQ8KTokens - 1) / kQ8KTokens;
      BlockQ8_KX8* xb = grow(f.xk8, tiles * nb);
      over_tokens(pool, tiles, kQ8KTokens * cols, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) interleave_q8_k(xk, n, nb, j, key.tokens8, xb + j * nb);
      });
      ++in.live_;  // not counted in made_: nothing quantized
      return f;
    }
    Format& f = new_slot(in, key);
    const float* x = in.x_;
    if (f.k_quant) {  // Q8_K blocks
      MX_CHECK(cols % kQK_K == 0, "PreparedInput: %lld columns are not whole Q8_K blocks",
               static_cast<long long>(cols));
      const int64_t nb = cols / kQK_K;
      BlockQ8_K* xb = grow(f.xk, n * nb);
      const detail::QuantizeQ8KFn quantize = table().quantize_q8_k;
      over_tokens(pool, n, cols, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) quantize(x + t * cols, cols, xb + t * nb);
      });
    } else {
      MX_CHECK(cols % kQK8_0 == 0, "PreparedInput: %lld columns are not whole Q8_0 blocks",
               static_cast<long long>(cols));
      const int64_t nb = cols / kQK8_0;
      int8_t* qs = grow(f.qs, n * cols);
      float* d = grow(f.d, n * nb);
      int32_t* bsum = grow(f.sum, n * nb);
      const PreparedInput::QuantizeFn quantize = f.quantize;
      const PreparedInput::ArrangeFn arrange = f.arrange;
      over_tokens(pool, n, cols, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          quantize(x + t * cols, cols, qs + t * cols, d + t * nb);
          for (int64_t b = 0; b < nb; ++b) {
            int32_t sum = 0;
            for (int j = 0; j < kQK8_0; ++j) sum += qs[(t * nb + b) * kQK8_0 + j];
            bsum[t * nb + b] = sum;
          }
          if (arrange != nullptr) arrange(qs + t * cols, cols);
        }
      });
    }
    ++in.live_;
    ++in.made_;
    return f;
  }

  // Fills a's activations for weight type kWeightTypes[i] under table k: the format it reads (Q8_0 blocks
  // in the order of the table's arrange function for the type, for every token count, so decode and
  // prefill of a kernel sum in the same order; Q8_K blocks; or none), and the f32 rows. Formats are made
  // with pool (nullptr: on the calling thread).
  static void activations(const KernelTable& k, int i, PreparedInput& x, ThreadPool* pool, MatmulArgs& a) {
    a.x = x.x_;
    Format key;
    if (!key_of(k, i, key)) return;
    const Format& f = get(x, key, pool);
    if (f.k_quant) {
      a.xk = f.xk.data();
      if (k.k_tokens8_lane != 0 && x.n_ > 1) {
        key.tokens8 = k.k_tokens8_lane;
        a.xk8 = get(x, key, pool).xk8.data();
      }
      return;
    }
    a.xq = f.qs.data();
    a.xd = f.d.data();
    a.xsum = f.sum.data();
  }

  // Copies rows[0..m) of every format src holds into dst's (already reset) slots.
  static void copy_formats(PreparedInput& dst, const PreparedInput& src, const int32_t* rows, int64_t m) {
    const int64_t cols = src.cols_;
    for (size_t i = 0; i < src.live_; ++i) {
      const Format& from = src.formats_[i];
      if (from.tokens8 != 0) continue;  // not per row: remade from the gathered Q8_K rows when needed
      Format& to = new_slot(dst, from);
      if (from.k_quant) {
        const int64_t nb = cols / kQK_K;
        BlockQ8_K* xb = grow(to.xk, m * nb);
        for (int64_t r = 0; r < m; ++r)
          std::memcpy(xb + r * nb, from.xk.data() + rows[r] * nb,
                      sizeof(BlockQ8_K) * static_cast<size_t>(nb));
      } else {
        const int64_t nb = cols / kQK8_0;
        int8_t* qs = grow(to.qs, m * cols);
        float* d = grow(to.d, m * nb);
        int32_t* bsum = grow(to.sum, m * nb);
        for (int64_t r = 0; r < m; ++r) {
          const int64_t t = rows[r];
          std::memcpy(qs + r * cols, from.qs.data() + t * cols, static_cast<size_t>(cols));
          std::memcpy(d + r * nb, from.d.data() + t * nb, sizeof(float) * static_cast<size_t>(nb));
          std::memcpy(bsum + r * nb, from.sum.data() + t * nb, sizeof(int32_t) * static_cast<size_t>(nb));
        }
      }
      ++dst.live_;
    }
  }
};

namespace {

// The matmul arguments of weight w (kWeightTypes[i]) under table k, with x in the weight's dot format.
detail::MatmulArgs prepare(const KernelTable& k, const TensorView& w, int i, PreparedInput& x,
                           ThreadPool& pool) {
  detail::MatmulArgs a;
  a.w = static_cast<const uint8_t*>(w.data);
  a.w_stride = w.row_stride();
  a.cols = w.cols();
  detail::PreparedAccess::activations(k, i, x, &pool, a);
  return a;
}

constexpr int64_t kRowAlign = 16;            // thread row ranges start at multiples of this
constexpr size_t kChunkBytes = 256 * 1024;   // weight rows per L2-resident chunk (prefill)
constexpr size_t kMinRunBytes = 256 * 1024;  // weights a thread takes at least in one run (run_split)

// Tokens the active kernels take in one pass over a weight of type t, reading each weight row once: the
// R16 kernels' token tiles (internal.h), one token for the others.
int64_t pass_tokens(DType t) {
  return row_group(t) > 1 ? detail::kR16TileTokens : 1;
}

// Walks rows [b, e) of one weight as fn(r0, nr): at once when its kernels read each row once for the n
// tokens (n <= pass: decode, R16 small batches), else in chunks of about kChunkBytes. (R16 kernels run row
// groups side by side; a whole range leaves fewer lone groups at chunk ends: 16 tokens over 8 experts, 2
// threads: 3-5% more tokens/s, measured.)
template <class Fn>
void walk_rows(int64_t b, int64_t e, size_t row_bytes, int64_t n, int64_t pass, const Fn& fn) {
  const int64_t chunk =
      n <= pass ? e - b
                : std::clamp<int64_t>(static_cast<int64_t>(kChunkBytes / std::max<size_t>(row_bytes, 1)) /
                                          kRowAlign * kRowAlign,
                                      kRowAlign, 256);
  for (int64_t r = b; r < e; r += chunk) fn(r, std::min(chunk, e - r));
}

// Runs the blocks [0, blocks) of a parallel region over the pool's threads in order: cost_before(b) is the
// estimated cost of blocks [0, b), nondecreasing; cut(c) the block where cumulative cost c falls;
// walk(b0, b1) runs blocks [b0, b1).
// - guided (decode and small batches, whose weights stream from memory once): the threads take runs as
//   they ask, each about 1 / (2 nth) of the cost still unclaimed and at least min_blocks, so long
//   sequential runs come first, short ones last, and the threads finish together even when the host slows
//   one of them. (A static split left a thread idle 7-10% of a Q4_K_M decode at 2 threads, under 1.5%
//   so: 4.9% more tokens/s on Q4_K_M, 6.1% on Q4_0, means over 10 alternating pairs each, measured.)
// - else (prefill, whose tiles re-read L2-sized chunks): one contiguous run of equal cost per thread.
template <class CostBefore, class Cut, class Walk>
void run_split(ThreadPool& pool, int64_t blocks, bool guided, int64_t min_blocks,
               const CostBefore& cost_before, const Cut& cut, const Walk& walk) {
  if (pool.size() == 1 || blocks < 2) {
    walk(0, blocks);
    return;
  }
  const double total = cost_before(blocks);
  std::atomic<int64_t> next{0};
  pool.run([&](int ith, int nth) {
    if (!guided) {
      const int64_t b0 = ith == 0 ? 0 : cut(total * ith / nth);
      const int64_t b1 = ith + 1 == nth ? blocks : cut(total * (ith + 1) / nth);
      if (b0 < b1) walk(b0, b1);
      return;
    }
    int64_t b = next.load(std::memory_order_relaxed);
    while (b < blocks) {
      const double done = cost_before(b);
      const int64_t e = std::clamp<int64_t>(cut(done + (total - done) / (2.0 * nth)),
                                            std::min(blocks, b + min_blocks), blocks);
      if (next.compare_exchange_weak(b, e, std::memory_order_relaxed)) {
        walk(b, e);
        b = next.load(std::memory_order_relaxed);
      }
    }
  });
}

// Blocks of kRowAlign rows a thread takes at least in one run: about kMinRunBytes of weights.
int64_t min_run_blocks(size_t block_bytes) {
  return std::max<int64_t>(1, static_cast<int64_t>(kMinRunBytes / std::max<size_t>(block_bytes, 1)));
}

// Splits rows [0, rows) over the pool in aligned runs (run_split): fn(r0, nr) per piece. With more tokens
// than the kernels take in one pass each run is walked in chunks of about kChunkBytes of weights (re-read
// from L2 for every token tile); else (decode) a run goes at once, which the kernels stream sequentially.
template <class Fn>
void run_rows(ThreadPool& pool, int64_t rows, size_t row_bytes, int64_t n, int64_t pass, const Fn& fn) {
  const int64_t blocks = (rows + kRowAlign - 1) / kRowAlign;
  run_split(
      pool, blocks, n <= pass, min_run_blocks(kRowAlign * row_bytes),
      [](int64_t b) { return static_cast<double>(b); },
      [&](double c) { return std::clamp<int64_t>(std::llround(c), 0, blocks); },
      [&](int64_t b0, int64_t b1) {
        walk_rows(b0 * kRowAlign, std::min(rows, b1 * kRowAlign), row_bytes, n, pass, fn);
      });
}

// One SwiGLU matmul's tiles: out = silu(W1 x) * (W3 x) for weight rows [r0, r0 + nr), all n tokens.
struct SwigluArgs {
  detail::MatmulArgs a1, a3;
  detail::MatmulTileFn t1 = nullptr, t3 = nullptr;
  detail::SiluMulFn silu_mul = nullptr;
  int64_t n = 0, ffn = 0;
  float* out = nullptr;  // [n, ffn]
};

void swiglu_rows(const SwigluArgs& s, int64_t r0, int64_t nr) {
  constexpr int64_t kTokenBlock = 64;
  thread_local std::vector<float> up;  // [min(n, kTokenBlock), nr] W3 x for this piece
  float* u = grow(up, std::min(s.n, kTokenBlock) * nr);
  for (int64_t t0 = 0; t0 < s.n; t0 += kTokenBlock) {
    const int64_t nt = std::min(kTokenBlock, s.n - t0);
    float* gate = s.out + t0 * s.ffn + r0;  // W1 x lands in place, then becomes silu(W1 x) * (W3 x)
    s.t1(s.a1, r0, nr, t0, nt, gate, s.ffn);
    s.t3(s.a3, r0, nr, t0, nt, u, nr);
    for (int64_t t = 0; t < nt; ++t) s.silu_mul(gate + t * s.ffn, u + t * nr, nr);
  }
}

// Estimated cost of a weight row read for n tokens, relative to one token's (a memory-bound stream), for
// kernels that take `pass` tokens in one pass over the weights. Measured per 8x7B Q4_0 expert at 2 threads
// (W1 + W3 + W2) on the one-row-at-a-time kernels (pass 1): 1.9, 3.0, 4.5, 6.4 ms for 1, 2, 4, 8 tokens, i.e.
// about n^0.6; past 8 tokens the token tiles' arithmetic dominates and grows about linearly. The R16 tiles
// (pass 8) read the weights once for up to 8 tokens: 14336 x 4096 at 2 threads, Q4_0_R16 0.47, 0.55, 0.58,
// 0.57, 0.67, 0.76, 0.94 ms for 1 .. 6 and 8 tokens, Q4_K_R16 0.44 .. 0.98 alike, about 1 + 0.14 (n - 1).
double token_cost(int64_t n, int64_t pass) {
  const auto x = static_cast<double>(n);
  if (pass > 1) return n <= 8 ? 1.0 + 0.14 * (x - 1.0) : 1.98 * x / 8.0;
  const double n8 = std::pow(8.0, 0.6);
  return n <= 8 ? std::pow(x, 0.6) : n8 * (1.0 + 0.8 * (x / 8.0 - 1.0));
}

// One group of a grouped region, as run_groups sees it.
struct GroupShape {
  int64_t rows = 0;
  int64_t n = 0;          // tokens
  size_t row_bytes = 0;   // bytes of one row of the largest weight (chunking, as run_rows)
  int64_t pass = 1;       // tokens its kernels take in one pass (pass_tokens; the smaller of two weights')
  double block_cost = 0;  // estimated cost of kRowAlign rows: all weights' bytes x token_cost(n, pass)
};

// Runs fn(g, r0, nr) over every group's rows [0, rows_g) in ONE pool.run. The groups' kRowAlign-row blocks,
// in group order, go to the threads in runs by estimated cost (run_split: guided when every group streams
// its weights once, else one contiguous run per thread; a run may span several groups); inside a group a
// run is walked as run_rows walks its range (chunks of about kChunkBytes of weights with more tokens than
// a pass, at once else).
template <class Fn>
void run_groups(ThreadPool& pool, const std::vector<GroupShape>& gs, const Fn& fn) {
  const auto n_groups = static_cast<int64_t>(gs.size());
  std::vector<int64_t> first(gs.size() + 1, 0);  // [n_groups + 1] global index of each group's first block
  std::vector<double> cost(gs.size() + 1, 0.0);  // [n_groups + 1] cost of the blocks before each group
  for (int64_t g = 0; g < n_groups; ++g) {
    first[g + 1] = first[g] + (gs[g].rows + kRowAlign - 1) / kRowAlign;
    cost[g + 1] = cost[g] + static_cast<double>(first[g + 1] - first[g]) * gs[g].block_cost;
  }
  // Walks global blocks [b0, b1).
  auto walk = [&](int64_t b0, int64_t b1) {
    for (int64_t g = 0; g < n_groups; ++g) {
      const int64_t lo = std::max(b0, first[g]), hi = std::min(b1, first[g + 1]);
      if (lo >= hi) continue;
      const GroupShape& s = gs[g];
      const int64_t r_begin = (lo - first[g]) * kRowAlign,
                    r_end = std::min(s.rows, (hi - first[g]) * kRowAlign);
      walk_rows(r_begin, r_end, s.row_bytes, s.n, s.pass, [&](int64_t r0, int64_t nr) { fn(g, r0, nr); });
    }
  };
  const int64_t blocks = first[n_groups];
  const auto group_of = [&](int64_t b) {  // the group of global block b (< blocks)
    return static_cast<int64_t>(std::upper_bound(first.begin() + 1, first.end(), b) - first.begin()) - 1;
  };
  const auto cost_before = [&](int64_t b) {
    if (b >= blocks) return cost[n_groups];
    const int64_t g = group_of(b);
    return cost[g] + static_cast<double>(b - first[g]) * gs[g].block_cost;
  };
  // The global block where cumulative cost c falls (rounded to the nearest block edge of its group).
  const auto cut = [&](double c) {
    if (c >= cost[n_groups]) return blocks;
    const int64_t g = std::max<int64_t>(
        0, static_cast<int64_t>(std::upper_bound(cost.begin() + 1, cost.end(), c) - cost.begin()) - 1);
    const double in_group = (c - cost[g]) / std::max(gs[g].block_cost, 1e-30);
    return std::clamp<int64_t>(first[g] + std::llround(in_group), first[g], first[g + 1]);
  };
  size_t block_bytes = 0;  // the smallest group's block: runs of at least kMinRunBytes of it
  bool guided = true;      // every group streams its weights once (run_split)
  for (const GroupShape& s : gs) {
    block_bytes = block_bytes == 0 ? kRowAlign * s.row_bytes : std::min(block_bytes, kRowAlign * s.row_bytes);
    guided = guided && s.n <= s.pass;
  }
  run_split(pool, blocks, guided, min_run_blocks(block_bytes), cost_before, cut, walk);
}

// Makes the formats that weight types kWeightTypes[i] read from their inputs, for every (input, i) pair of
// need, before a parallel region reads them (PreparedInput is not thread-safe). Several inputs with enough
// values: one region over the distinct inputs, each made whole by one thread; else on the calling thread,
// each in parallel over its tokens.
void prepare_inputs(const KernelTable& k, const std::vector<std::pair<PreparedInput*, int>>& need,
                    ThreadPool& pool) {
  std::vector<PreparedInput*> inputs;  // distinct, in first-use order
  int64_t values = 0;
  for (const auto& [x, i] : need)
    if (std::find(inputs.begin(), inputs.end(), x) == inputs.end()) {
      inputs.push_back(x);
      values += x->n() * x->cols();
    }
  auto make = [&](PreparedInput* x, ThreadPool* p) {
    detail::MatmulArgs a;
    for (const auto& [y, i] : need)
      if (y == x) detail::PreparedAccess::activations(k, i, *x, p, a);
  };
  if (pool.size() == 1 || inputs.size() < 2 || values < (1 << 15)) {
    for (PreparedInput* x : inputs) make(x, &pool);
    return;
  }
  std::atomic<size_t> next{0};
  pool.run([&](int, int) {
    for (size_t j = next.fetch_add(1); j < inputs.size(); j = next.fetch_add(1)) make(inputs[j], nullptr);
  });
}

void check_matmul(const TensorView& w, const PreparedInput& x, const float* y) {
  MX_CHECK(w.data != nullptr && w.ndim >= 1, "matmul: empty weight view");
  MX_CHECK(x.n() == 0 || (x.data() != nullptr && y != nullptr), "matmul: null activations or output");
  MX_CHECK(x.cols() == w.cols(), "matmul: activations of %lld columns for weight %s",
           static_cast<long long>(x.cols()), shape_string(w).c_str());
  const DTypeTraits& tr = traits(w.dtype);
  MX_CHECK(w.cols() % tr.block_size == 0, "matmul: %lld columns are not whole %s blocks",
           static_cast<long long>(w.cols()), std::string(tr.name).c_str());
}

// The calling thread's input for the float* forms (its buffers reused across calls).
PreparedInput& thread_input(const TensorView& w, const float* x, int64_t n) {
  thread_local PreparedInput in;
  MX_CHECK(n >= 0, "matmul: n = %lld", static_cast<long long>(n));
  in.reset(x, n, w.cols());
  return in;
}

// ---------------------------------------------------------------------------------------------------------
// Fallback for the supported weight types not in kWeightTypes (Q4_1, Q5_0, Q5_1, Q2_K, Q3_K): each thread
// dequantizes tiles of weight rows to f32 with the scalar dequantize_row and runs the table's f32 tile on
// them. Correct for every supported type; a type added to kWeightTypes leaves it.
namespace fallback {

void matmul(const TensorView& w, const float* x, int64_t n, float* y, int64_t ldy, ThreadPool& pool) {
  const detail::MatmulTileFn f32_tile = table().matmul[weight_index(DType::F32)].tile;
  const int64_t rows = w.rows(), cols = w.cols();
  constexpr int64_t kTileRows = 16;
  run_rows(pool, rows, w.row_stride(), n, 1, [&](int64_t r0, int64_t nr) {
    thread_local std::vector<float> tile;  // [kTileRows, cols] dequantized weight rows
    if (tile.size() < static_cast<size_t>(kTileRows * cols))
      tile.resize(static_cast<size_t>(kTileRows * cols));
    detail::MatmulArgs a;
    a.w = reinterpret_cast<const uint8_t*>(tile.data());
    a.w_stride = static_cast<size_t>(cols) * sizeof(float);
    a.cols = cols;
    a.x = x;
    for (int64_t r = r0; r < r0 + nr; r += kTileRows) {
      const int64_t m = std::min(kTileRows, r0 + nr - r);
      for (int64_t i = 0; i < m; ++i) dequantize_row(w.dtype, w.row(r + i), tile.data() + i * cols, cols);
      f32_tile(a, 0, m, 0, n, y + r, ldy);
    }
  });
}

void matmul_swiglu(const TensorView& w1, const TensorView& w3, PreparedInput& x, float* out,
                   ThreadPool& pool) {
  const int64_t n = x.n(), ffn = w1.rows();
  thread_local std::vector<float> up;  // [n, ffn] W3 x
  float* u = grow(up, n * ffn);
  for (const auto& [w, dst] : {std::pair{&w1, out}, std::pair{&w3, u}}) {
    if (weight_index(w->dtype) >= 0) {
      kernels::matmul(*w, x, dst, ffn, pool);
    } else {
      fallback::matmul(*w, x.data(), n, dst, ffn, pool);
    }
  }
  for (int64_t t = 0; t < n; ++t) table().silu_mul(out + t * ffn, u + t * ffn, ffn);
}

}  // namespace fallback

}  // namespace

DType preferred_layout(DType t, int64_t rows, int64_t cols) {
  const int i = weight_index(t);
  if (i < 0) return t;
  const DType to = table().matmul[i].layout;
  if (to == t || cols % traits(to).block_size != 0 || rows % row_group(to) != 0) return t;
  return to;
}

namespace detail {

void r16_by_rows(DType packed, MatmulTileFn file_tile, const MatmulArgs& a, int64_t r0, int64_t nr,
                 int64_t t0, int64_t nt, float* y, int64_t ldy) {
  const DType file = file_layout(packed);
  thread_local std::vector<uint8_t> group;  // [16, w_stride] one row group back in the file type
  const uint8_t* unpacked = nullptr;        // the group now in `group`
  grow(group, kR16Rows * static_cast<int64_t>(a.w_stride));
  MatmulArgs row = a;
  row.w = group.data();
  for (int64_t r = r0; r < r0 + nr; ++r) {
    const uint8_t* g = a.w + (r / kR16Rows) * kR16Rows * a.w_stride;  // the group's first row
    if (g != unpacked) {
      repack(packed, file, g, group.data(), kR16Rows, a.cols);
      unpacked = g;
    }
    file_tile(row, r % kR16Rows, 1, t0, nt, y + (r - r0), ldy);
  }
}

}  // namespace detail

Isa detect_isa() {
  static const Isa best = clamp_isa(Isa::kAvx512);
  return best;
}

Isa active_isa() {
  return active().isa.load(std::memory_order_relaxed);
}

void set_isa(Isa isa) {
  const Isa got = clamp_isa(isa);
  active().table.store(table_of(got));
  active().isa.store(got);
}

const KernelTable& detail::active_table() {
  return table();
}

void detail::set_table_for_testing(Isa isa, const KernelTable* t) {
  active().table.store(t);
  active().isa.store(isa);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "?";
}

void PreparedInput::reset(const float* x, int64_t n, int64_t cols) {
  MX_CHECK(n >= 0 && cols >= 0 && (n == 0 || x != nullptr),
           "PreparedInput::reset: x %p, n = %lld, cols = %lld", static_cast<const void*>(x),
           static_cast<long long>(n), static_cast<long long>(cols));
  x_ = x;
  n_ = n;
  cols_ = cols;
  live_ = 0;
  made_ = 0;
}

void PreparedInput::gather(const PreparedInput& src, const int32_t* rows, int64_t m) {
  MX_CHECK(&src != this, "PreparedInput::gather: source and destination are the same object");
  MX_CHECK(m >= 0 && (m == 0 || rows != nullptr), "PreparedInput::gather: %lld rows",
           static_cast<long long>(m));
  const int64_t cols = src.cols_;
  for (int64_t r = 0; r < m; ++r)
    MX_CHECK(rows[r] >= 0 && rows[r] < src.n_, "PreparedInput::gather: row %d of %lld", rows[r],
             static_cast<long long>(src.n_));
  float* x = grow(own_, m * cols);
  for (int64_t r = 0; r < m; ++r)
    std::memcpy(x + r * cols, src.x_ + rows[r] * cols, sizeof(float) * static_cast<size_t>(cols));
  reset(x, m, cols);
  detail::PreparedAccess::copy_formats(*this, src, rows, m);
}

void PreparedInput::prepare_for(const TensorView& w, ThreadPool& pool) {
  MX_CHECK(w.cols() == cols_, "PreparedInput::prepare_for: %lld columns for weight %s",
           static_cast<long long>(cols_), shape_string(w).c_str());
  const int i = weight_index(w.dtype);
  if (n_ == 0 || i < 0) return;
  Format key;
  if (detail::PreparedAccess::key_of(table(), i, key)) detail::PreparedAccess::get(*this, key, &pool);
}

void matmul(const TensorView& w, PreparedInput& x, float* y, int64_t ldy, ThreadPool& pool) {
  check_matmul(w, x, y);
  const int64_t rows = w.rows(), n = x.n();
  MX_CHECK(ldy >= rows, "matmul: ldy %lld < rows %lld", static_cast<long long>(ldy),
           static_cast<long long>(rows));
  if (n == 0 || rows == 0) return;
  const int i = weight_index(w.dtype);
  if (i < 0) return fallback::matmul(w, x.data(), n, y, ldy, pool);
  const KernelTable& k = table();
  const detail::MatmulArgs a = prepare(k, w, i, x, pool);
  const detail::MatmulTileFn tile = k.matmul[i].tile;
  run_rows(pool, rows, a.w_stride, n, pass_tokens(w.dtype),
           [&](int64_t r0, int64_t nr) { tile(a, r0, nr, 0, n, y + r0, ldy); });
}

void matmul(const TensorView& w, const float* x, int64_t n, float* y, int64_t ldy, ThreadPool& pool) {
  matmul(w, thread_input(w, x, n), y, ldy, pool);
}

void matmul_swiglu(const TensorView& w1, const TensorView& w3, PreparedInput& x, float* out,
                   ThreadPool& pool) {
  check_matmul(w1, x, out);
  check_matmul(w3, x, out);
  const int64_t ffn = w1.rows(), n = x.n();
  MX_CHECK(w3.rows() == ffn && w3.cols() == w1.cols(), "matmul_swiglu: w1 %s and w3 %s differ in shape",
           shape_string(w1).c_str(), shape_string(w3).c_str());
  if (n == 0 || ffn == 0) return;
  const int i1 = weight_index(w1.dtype), i3 = weight_index(w3.dtype);
  if (i1 < 0 || i3 < 0) return fallback::matmul_swiglu(w1, w3, x, out, pool);
  const KernelTable& k = table();
  // Both from x's cache: one format when the two types read the same one, else two.
  const detail::MatmulArgs a1 = prepare(k, w1, i1, x, pool);
  const detail::MatmulArgs a3 = prepare(k, w3, i3, x, pool);
  const SwigluArgs s{a1, a3, k.matmul[i1].tile, k.matmul[i3].tile, k.silu_mul, n, ffn, out};
  run_rows(pool, ffn, std::max(a1.w_stride, a3.w_stride), n,
           std::min(pass_tokens(w1.dtype), pass_tokens(w3.dtype)),
           [&](int64_t r0, int64_t nr) { swiglu_rows(s, r0, nr); });
}

void matmul_swiglu(const TensorView& w1, const TensorView& w3, const float* x, int64_t n, float* out,
                   ThreadPool& pool) {
  matmul_swiglu(w1, w3, thread_input(w1, x, n), out, pool);
}

void matmul_groups(const MatmulGroup* g, int64_t n_groups, ThreadPool& pool) {
  MX_CHECK(n_groups >= 0 && (n_groups == 0 || g != nullptr), "matmul_groups: %lld groups",
           static_cast<long long>(n_groups));
  const KernelTable& k = table();
  std::vector<int64_t> run;  // table-kernel groups with work, in order
  std::vector<std::pair<PreparedInput*, int>> need;
  for (int64_t j = 0; j < n_groups; ++j) {
    MX_CHECK(g[j].x != nullptr, "matmul_groups: group %lld has no input", static_cast<long long>(j));
    check_matmul(g[j].w, *g[j].x, g[j].y);
    MX_CHECK(g[j].ldy >= g[j].w.rows(), "matmul_groups: group %lld: ldy %lld < rows %lld",
             static_cast<long long>(j), static_cast<long long>(g[j].ldy),
             static_cast<long long>(g[j].w.rows()));
    if (g[j].x->n() == 0 || g[j].w.rows() == 0) continue;
    const int i = weight_index(g[j].w.dtype);
    if (i < 0) {  // fallback type: on its own
      fallback::matmul(g[j].w, g[j].x->data(), g[j].x->n(), g[j].y, g[j].ldy, pool);
      continue;
    }
    run.push_back(j);
    need.emplace_back(g[j].x, i);
  }
  prepare_inputs(k, need, pool);
  std::vector<detail::MatmulArgs> args(run.size());
  std::vector<detail::MatmulTileFn> tiles(run.size());
  std::vector<GroupShape> shapes(run.size());
  for (size_t j = 0; j < run.size(); ++j) {
    const MatmulGroup& gj = g[run[j]];
    const int i = weight_index(gj.w.dtype);
    args[j] = prepare(k, gj.w, i, *gj.x, pool);  // formats made above: lookups only
    tiles[j] = k.matmul[i].tile;
    shapes[j].rows = gj.w.rows();
    shapes[j].n = gj.x->n();
    shapes[j].row_bytes = args[j].w_stride;
    shapes[j].pass = pass_tokens(gj.w.dtype);
    shapes[j].block_cost =
        static_cast<double>(kRowAlign * args[j].w_stride) * token_cost(shapes[j].n, shapes[j].pass);
  }
  run_groups(pool, shapes, [&](int64_t j, int64_t r0, int64_t nr) {
    const MatmulGroup& gj = g[run[static_cast<size_t>(j)]];
    tiles[j](args[j], r0, nr, 0, shapes[j].n, gj.y + r0, gj.ldy);
  });
}

void matmul_swiglu_groups(const SwigluGroup* g, int64_t n_groups, ThreadPool& pool) {
  MX_CHECK(n_groups >= 0 && (n_groups == 0 || g != nullptr), "matmul_swiglu_groups: %lld groups",
           static_cast<long long>(n_groups));
  const KernelTable& k = table();
  std::vector<int64_t> run;  // table-kernel groups with work, in order
  std::vector<std::pair<PreparedInput*, int>> need;
  for (int64_t j = 0; j < n_groups; ++j) {
    const SwigluGroup& gj = g[j];
    MX_CHECK(gj.x != nullptr, "matmul_swiglu_groups: group %lld has no input", static_cast<long long>(j));
    check_matmul(gj.w1, *gj.x, gj.out);
    check_matmul(gj.w3, *gj.x, gj.out);
    MX_CHECK(gj.w3.rows() == gj.w1.rows() && gj.w3.cols() == gj.w1.cols(),
             "matmul_swiglu_groups: w1 %s and w3 %s differ in shape", shape_string(gj.w1).c_str(),
             shape_string(gj.w3).c_str());
    if (gj.x->n() == 0 || gj.w1.rows() == 0) continue;
    const int i1 = weight_index(gj.w1.dtype), i3 = weight_index(gj.w3.dtype);
    if (i1 < 0 || i3 < 0) {  // a fallback type: on its own
      fallback::matmul_swiglu(gj.w1, gj.w3, *gj.x, gj.out, pool);
      continue;
    }
    run.push_back(j);
    need.emplace_back(gj.x, i1);
    need.emplace_back(gj.x, i3);
  }
  prepare_inputs(k, need, pool);
  std::vector<SwigluArgs> args(run.size());
  std::vector<GroupShape> shapes(run.size());
  for (size_t j = 0; j < run.size(); ++j) {
    const SwigluGroup& gj = g[run[j]];
    const int i1 = weight_index(gj.w1.dtype), i3 = weight_index(gj.w3.dtype);
    const detail::MatmulArgs a1 = prepare(k, gj.w1, i1, *gj.x, pool);  // formats made above: lookups only
    const detail::MatmulArgs a3 = prepare(k, gj.w3, i3, *gj.x, pool);
    args[j] =
        SwigluArgs{a1, a3, k.matmul[i1].tile, k.matmul[i3].tile, k.silu_mul, gj.x->n(), gj.w1.rows(), gj.out};
    shapes[j].rows = gj.w1.rows();
    shapes[j].n = gj.x->n();
    shapes[j].row_bytes = std::max(a1.w_stride, a3.w_stride);
    shapes[j].pass = std::min(pass_tokens(gj.w1.dtype), pass_tokens(gj.w3.dtype));
    shapes[j].block_cost = static_cast<double>(kRowAlign * (a1.w_stride + a3.w_stride)) *
                           token_cost(shapes[j].n, shapes[j].pass);
  }
  run_groups(pool, shapes, [&](int64_t j, int64_t r0, int64_t nr) { swiglu_rows(args[j], r0, nr); });
}

void rmsnorm(const float* x, const float* w, int64_t n, int64_t dim, float eps, float* out) {
  MX_CHECK(n >= 0 && dim > 0, "rmsnorm: n = %lld, dim = %lld", static_cast<long long>(n),
           static_cast<long long>(dim));
  table().rmsnorm(x, w, n, dim, eps, out);
}

void rope(float* x, const int32_t* pos, int64_t n, const RopeParams& p) {
  MX_CHECK(p.head_dim > 0 && p.head_dim % 2 == 0, "rope: head_dim %lld is not even",
           static_cast<long long>(p.head_dim));
  const int64_t hd = p.head_dim, half = hd / 2;
  thread_local std::vector<double> freq;  // [half] theta^(-2i/hd)
  thread_local std::vector<float> cs;     // [2, half] cos, sin of one position
  freq.resize(static_cast<size_t>(half));
  cs.resize(static_cast<size_t>(2 * half));
  for (int64_t i = 0; i < half; ++i)
    freq[i] = std::pow(static_cast<double>(p.theta), -2.0 * static_cast<double>(i) / hd);
  const int64_t i_step = p.layout == RopeLayout::kInterleaved ? 2 : 1;  // first element of pair i
  const int64_t pair_off = p.layout == RopeLayout::kInterleaved ? 1 : half;
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(pos[t]) * freq[i];
      cs[i] = static_cast<float>(std::cos(angle));
      cs[half + i] = static_cast<float>(std::sin(angle));
    }
    for (int64_t h = 0; h < p.n_heads; ++h) {
      float* v = x + (t * p.n_heads + h) * hd;
      for (int64_t i = 0; i < half; ++i) {
        float* e0 = v + i * i_step;
        float* e1 = e0 + pair_off;
        const float a = *e0, b = *e1, c = cs[i], s = cs[half + i];
        *e0 = a * c - b * s;
        *e1 = a * s + b * c;
      }
    }
  }
}

void silu_mul(float* x, const float* g, int64_t n) {
  table().silu_mul(x, g, n);
}

void softmax(float* x, int64_t n) {
  table().softmax(x, n);
}

}  // namespace mixtral::kernels
