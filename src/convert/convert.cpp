// `mixtral quantize` and `mixtral convert`: any model we load -> a llama.cpp-compatible GGUF.
//
// The source is loaded with load_model (zero copy: every weight matrix is a view into a read-only
// memory map, norms and the router are small f32 copies), so both commands share one writer: a plan
// of output tensors (name, type, shape, the source views stacked along the outermost dimension, q/k
// row permutation), then GgufWriter streams each tensor into the mapped output file row by row, rows
// (de)quantised in parallel on the ThreadPool. Written output pages and read input pages are handed
// back to the kernel chunk by chunk, so the resident set stays a few chunks, not the model.
#include "convert/convert.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "core/progress.h"
#include "core/thread_pool.h"
#include "io/gguf.h"
#include "io/imatrix.h"
#include "io/quote.h"
#include "mixtral/tokenizer.h"
#include "model/weights.h"
#include "tensor/quant.h"

namespace mixtral {
namespace convert {
namespace {

namespace fs = std::filesystem;

struct TargetEntry {
  const char* name;
  DType base;
  uint32_t file_type;  // llama_ftype
  Mix mix;
};

// Plain types are one type everywhere; Q3_K/Q4_K/Q5_K alone are recorded as the _S mix's file type
// (the nearest llama.cpp has). The rest are llama.cpp's mixes of those names, with its file type numbers
// and base types (llama_ftype_get_default_type: IQ2_S's base is iq2_xs, IQ2_M's iq2_s, IQ3_XS's and
// IQ3_M's iq3_s). Q2_K is the mix (a pure Q2_K: --pure).
constexpr TargetEntry kTargets[] = {
    {"F32", DType::F32, 0, Mix::kNone},
    {"F16", DType::F16, 1, Mix::kNone},
    {"BF16", DType::BF16, 32, Mix::kNone},
    {"Q4_0", DType::Q4_0, 2, Mix::kNone},
    {"Q4_1", DType::Q4_1, 3, Mix::kNone},
    {"Q5_0", DType::Q5_0, 8, Mix::kNone},
    {"Q5_1", DType::Q5_1, 9, Mix::kNone},
    {"Q8_0", DType::Q8_0, 7, Mix::kNone},
    {"Q2_K", DType::Q2_K, 10, Mix::kQ2_K},
    {"Q3_K", DType::Q3_K, 11, Mix::kNone},
    {"Q4_K", DType::Q4_K, 14, Mix::kNone},
    {"Q5_K", DType::Q5_K, 16, Mix::kNone},
    {"Q6_K", DType::Q6_K, 18, Mix::kNone},
    {"Q3_K_S", DType::Q3_K, 11, Mix::kQ3_K_S},
    {"Q3_K_M", DType::Q3_K, 12, Mix::kQ3_K_M},
    {"Q3_K_L", DType::Q3_K, 13, Mix::kQ3_K_L},
    {"Q4_K_S", DType::Q4_K, 14, Mix::kQ4_K_S},
    {"Q4_K_M", DType::Q4_K, 15, Mix::kQ4_K_M},
    {"Q5_K_S", DType::Q5_K, 16, Mix::kQ5_K_S},
    {"Q5_K_M", DType::Q5_K, 17, Mix::kQ5_K_M},
    {"IQ4_NL", DType::IQ4_NL, 25, Mix::kIQ4_NL},
    {"IQ4_XS", DType::IQ4_XS, 30, Mix::kIQ4_XS},
    {"IQ1_S", DType::IQ1_S, 24, Mix::kIQ1_S},
    {"IQ1_M", DType::IQ1_M, 31, Mix::kIQ1_M},
    {"IQ2_XXS", DType::IQ2_XXS, 19, Mix::kIQ2_XXS},
    {"IQ2_XS", DType::IQ2_XS, 20, Mix::kIQ2_XS},
    {"IQ2_S", DType::IQ2_XS, 28, Mix::kIQ2_S},
    {"IQ2_M", DType::IQ2_S, 29, Mix::kIQ2_M},
    {"IQ3_XXS", DType::IQ3_XXS, 23, Mix::kIQ3_XXS},
    {"IQ3_XS", DType::IQ3_S, 22, Mix::kIQ3_XS},
    {"IQ3_S", DType::IQ3_S, 26, Mix::kIQ3_S},
    {"IQ3_M", DType::IQ3_S, 27, Mix::kIQ3_M},
};

std::string upper(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string joined_names() {
  std::string s;
  for (const auto& t : kTargets) {
    if (!s.empty()) s += ", ";
    s += t.name;
  }
  return s;
}

}  // namespace

Result<Target> parse_target(std::string_view name) {
  const std::string u = upper(name);
  for (const auto& t : kTargets)
    if (u == t.name) return Target{t.name, t.base, t.file_type, t.mix};
  return Error::usage("unknown type '" + std::string(name) + "' (one of " + joined_names() + ")");
}

bool can_write(DType t) {
  return traits(t).quantizable;
}

// llama.cpp's tensor_requires_imatrix (its Q2_K_S case aside: no such mix here).
bool requires_imatrix(Role role, DType t) {
  return role != Role::kTokenEmbd && role != Role::kOutput && needs_importance(t);
}

// llama.cpp's llama_tensor_get_type for the llama architecture (Mixtral's), rule by rule. Not carried
// over: the Falcon and 70B special cases (other architectures and shapes) and the fused attn_qkv
// (Mixtral has none). llama.cpp counts attn_v and ffn_down tensors to get "layer"; with one such tensor
// per block (the merged experts this writes) the count is the block index.
DType policy_type(const PolicyInput& in, const ModelConfig& c, Role role, int64_t layer) {
  if (role == Role::kNorm || role == Role::kRouter) return DType::F32;
  const Target& t = in.target;
  const Mix m = t.mix;
  if (m == Mix::kNone || in.pure) return t.base;
  const int64_t n = c.n_layers;
  const bool experts8 = c.n_experts == 8;           // llama.cpp's n_expert == 8 bumps
  const bool gqa4 = c.n_heads >= 4 * c.n_kv_heads;  // n_gqa() >= 4
  // use_more_bits: the first and last eighth of the layers and every third in between.
  const bool more_bits = layer < n / 8 || layer >= 7 * n / 8 || (layer - n / 8) % 3 == 2;
  auto is = [m](std::initializer_list<Mix> ms) { return std::find(ms.begin(), ms.end(), m) != ms.end(); };
  // The 1- and 2-bit mixes share one branch; IQ2_S and IQ2_M take iq3_s where the others take q2_k.
  const bool low = is({Mix::kIQ1_S, Mix::kIQ1_M, Mix::kIQ2_XXS, Mix::kIQ2_XS, Mix::kIQ2_S, Mix::kIQ2_M});
  const DType low_bump = is({Mix::kIQ2_S, Mix::kIQ2_M}) ? DType::IQ3_S : DType::Q2_K;

  if (role == Role::kOutput) {
    // Rows (dim) not whole blocks of the base type: q8_0.
    if (c.dim % traits(t.base).block_size != 0) return DType::Q8_0;
    return low || m == Mix::kIQ3_XXS ? DType::Q5_K : DType::Q6_K;
  }
  if (role == Role::kTokenEmbd) {
    if (is({Mix::kIQ1_S, Mix::kIQ1_M, Mix::kIQ2_XXS, Mix::kIQ2_XS})) return DType::Q2_K;
    if (is({Mix::kIQ2_S, Mix::kIQ2_M, Mix::kIQ3_XXS})) return DType::IQ3_S;
    return t.base;
  }
  if (low) {
    switch (role) {
      case Role::kAttnV:
        return gqa4 || c.n_experts >= 4 ? DType::Q4_K : low_bump;
      case Role::kAttnK:
        return experts8 ? DType::Q4_K : t.base;
      case Role::kFfnDown:
        return layer < n / 8 ? low_bump : t.base;
      case Role::kAttnOutput:
        if (experts8) return DType::Q5_K;
        if (is({Mix::kIQ1_S, Mix::kIQ1_M})) return DType::IQ2_XXS;
        return is({Mix::kIQ2_S, Mix::kIQ2_M}) ? DType::IQ3_S : t.base;
      default:
        return t.base;
    }
  }
  switch (role) {
    case Role::kAttnV: {
      DType v = t.base;
      if (m == Mix::kQ2_K) {
        v = gqa4 ? DType::Q4_K : DType::Q3_K;
      } else if (m == Mix::kIQ3_XXS) {
        v = gqa4 ? DType::Q4_K : !in.imatrix ? DType::IQ3_S : DType::IQ3_XXS;
      } else if (is({Mix::kIQ3_XS, Mix::kIQ3_S}) && gqa4) {
        v = DType::Q4_K;
      } else if (m == Mix::kIQ3_M) {
        v = DType::Q4_K;
      } else if (m == Mix::kQ3_K_M) {
        v = layer < 2 ? DType::Q5_K : DType::Q4_K;
      } else if (m == Mix::kQ3_K_L) {
        v = DType::Q5_K;
      } else if (is({Mix::kIQ4_NL, Mix::kIQ4_XS}) && gqa4) {
        v = DType::Q5_K;
      } else if (is({Mix::kQ4_K_M, Mix::kQ5_K_M}) && more_bits) {
        v = DType::Q6_K;
      } else if (m == Mix::kQ4_K_S && layer < 4) {
        v = DType::Q5_K;
      }
      return experts8 ? DType::Q8_0 : v;
    }
    case Role::kAttnK:
      if (experts8) return DType::Q8_0;
      if (m == Mix::kIQ3_XS) return DType::IQ3_XXS;
      return m == Mix::kIQ3_XXS ? DType::IQ2_S : t.base;
    case Role::kAttnQ:
      if (m == Mix::kIQ3_XS) return DType::IQ3_XXS;
      return m == Mix::kIQ3_XXS ? DType::IQ2_S : t.base;
    case Role::kFfnDown:
      if (m == Mix::kQ2_K) return DType::Q3_K;
      if (m == Mix::kIQ3_XXS && !in.imatrix) return layer < n / 8 ? DType::Q4_K : DType::Q3_K;
      if (m == Mix::kQ3_K_M) return layer < n / 16 ? DType::Q5_K : DType::Q4_K;
      if (m == Mix::kIQ3_M && (layer < n / 8 || (experts8 && more_bits))) return DType::Q4_K;
      if (m == Mix::kQ3_K_L) return DType::Q5_K;
      if (m == Mix::kQ4_K_M) return more_bits ? DType::Q6_K : t.base;
      if (is({Mix::kIQ4_NL, Mix::kIQ4_XS}) && !in.imatrix && layer < n / 8) return DType::Q5_K;
      if (m == Mix::kQ5_K_M && more_bits) return DType::Q6_K;
      if (m == Mix::kQ4_K_S && layer < n / 8) return DType::Q5_K;
      return t.base;
    case Role::kAttnOutput:
      if (experts8)
        return is({Mix::kQ2_K, Mix::kIQ3_XS, Mix::kIQ3_XXS, Mix::kQ3_K_S, Mix::kQ3_K_M, Mix::kIQ4_NL,
                   Mix::kQ4_K_S, Mix::kQ4_K_M, Mix::kIQ3_S, Mix::kIQ3_M, Mix::kIQ4_XS})
                   ? DType::Q5_K
                   : t.base;
      if (m == Mix::kQ2_K) return DType::Q3_K;
      if (m == Mix::kIQ3_XXS) return DType::IQ3_S;
      if (m == Mix::kQ3_K_M || m == Mix::kIQ3_M) return DType::Q4_K;
      return m == Mix::kQ3_K_L ? DType::Q5_K : t.base;
    case Role::kFfnGate:
    case Role::kFfnUp:
      return m == Mix::kIQ3_XS && layer >= n / 8 && layer < 7 * n / 8 ? DType::IQ3_XXS : t.base;
    default:
      return t.base;
  }
}

DType row_fallback(DType want, int64_t cols) {
  if (cols % traits(want).block_size == 0) return want;
  DType next = DType::F16;
  switch (want) {
    case DType::IQ1_S:
    case DType::IQ1_M:
    case DType::IQ2_XXS:
    case DType::IQ2_XS:
    case DType::IQ2_S:
    case DType::IQ3_XXS:
    case DType::IQ3_S:
    case DType::IQ4_XS:
      next = DType::IQ4_NL;
      break;
    case DType::Q2_K:
    case DType::Q3_K:
      next = DType::Q4_0;
      break;
    case DType::Q4_K:
      next = DType::Q5_0;
      break;
    case DType::Q5_K:
      next = DType::Q5_1;
      break;
    case DType::Q6_K:
      next = DType::Q8_0;
      break;
    default:
      break;
  }
  return cols % traits(next).block_size == 0 ? next : DType::F16;  // f16: block size 1
}

namespace {

// ---------------------------------------------------------------------------------------------
// The plan: one entry per output tensor.

struct PlannedTensor {
  std::string name;
  Role role = Role::kTokenEmbd;
  int64_t layer = -1;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;     // row-major, as written
  std::vector<TensorView> parts;  // each [rows, cols] (a vector as [1, cols]), stacked along dim 0
  int64_t rope_heads = 0;         // > 0: rows are q/k heads in rotate-half order, written interleaved
  int64_t head_dim = 0;
  std::vector<float> qw;  // [n_mat, cols] importance weights (quantize --imatrix); empty: none
  int64_t rows_per_part() const { return parts[0].rows(); }
  int64_t cols() const { return parts[0].cols(); }
  int64_t numel() const { return rows_per_part() * cols() * static_cast<int64_t>(parts.size()); }
};

TensorView f32_view(const std::vector<float>& v, int64_t rows, int64_t cols) {
  TensorView t;
  t.data = v.data();
  t.dtype = DType::F32;
  t.ndim = rows == 1 ? 1 : 2;
  if (rows == 1) {
    t.shape[0] = cols;
  } else {
    t.shape[0] = rows;
    t.shape[1] = cols;
  }
  return t;
}

struct Planner {
  const Model& m;
  const PolicyInput& policy;
  std::vector<PlannedTensor> out;

  void add(std::string name, Role role, int64_t layer, std::vector<TensorView> parts, bool stacked,
           int64_t rope_heads = 0) {
    PlannedTensor p;
    p.name = std::move(name);
    p.role = role;
    p.layer = layer;
    p.parts = std::move(parts);
    const TensorView& v = p.parts[0];
    if (stacked) {
      p.shape = {static_cast<int64_t>(p.parts.size()), v.rows(), v.cols()};
    } else if (v.ndim == 1) {
      p.shape = {v.cols()};
    } else {
      p.shape = {v.rows(), v.cols()};
    }
    if (rope_heads > 0 && m.config.rope_layout == RopeLayout::kHalf) {
      p.rope_heads = rope_heads;
      p.head_dim = m.config.head_dim;
    }
    p.dtype = policy_type(policy, m.config, role, layer);
    out.push_back(std::move(p));
  }

  void build() {
    const ModelConfig& c = m.config;
    add("token_embd.weight", c.tie_embeddings ? Role::kOutput : Role::kTokenEmbd, -1, {m.tok_embd}, false);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const LayerWeights& L = m.layers[static_cast<size_t>(l)];
      const std::string p = "blk." + std::to_string(l) + ".";
      add(p + "attn_norm.weight", Role::kNorm, l, {f32_view(L.attn_norm, 1, c.dim)}, false);
      add(p + "attn_q.weight", Role::kAttnQ, l, {L.wq}, false, c.n_heads);
      add(p + "attn_k.weight", Role::kAttnK, l, {L.wk}, false, c.n_kv_heads);
      add(p + "attn_v.weight", Role::kAttnV, l, {L.wv}, false);
      add(p + "attn_output.weight", Role::kAttnOutput, l, {L.wo}, false);
      add(p + "ffn_norm.weight", Role::kNorm, l, {f32_view(L.ffn_norm, 1, c.dim)}, false);
      if (L.router.empty()) {  // dense FFN: llama.cpp's plain names
        add(p + "ffn_gate.weight", Role::kFfnGate, l, {L.w1[0]}, false);
        add(p + "ffn_down.weight", Role::kFfnDown, l, {L.w2[0]}, false);
        add(p + "ffn_up.weight", Role::kFfnUp, l, {L.w3[0]}, false);
      } else {
        add(p + "ffn_gate_inp.weight", Role::kRouter, l, {f32_view(L.router, c.n_experts, c.dim)}, false);
        add(p + "ffn_gate_exps.weight", Role::kFfnGate, l, L.w1, true);
        add(p + "ffn_down_exps.weight", Role::kFfnDown, l, L.w2, true);
        add(p + "ffn_up_exps.weight", Role::kFfnUp, l, L.w3, true);
      }
    }
    add("output_norm.weight", Role::kNorm, -1, {f32_view(m.out_norm, 1, c.dim)}, false);
    if (!c.tie_embeddings) add("output.weight", Role::kOutput, -1, {m.output}, false);
  }
};

// Applies the row-length fallback, then refuses a plan that needs an importance matrix when none is
// given (`missing_imatrix`: the one-line message) and one with a type this build cannot write; only a plan
// that passes notes its fallbacks.
Status finish_plan(std::vector<PlannedTensor>& plan, const PolicyInput& in, const ConvertOptions& o,
                   const std::function<void(const std::string&)>& note, const std::string& missing_imatrix) {
  std::vector<std::string> notes;
  for (auto& p : plan) {
    const DType want = p.dtype;
    p.dtype = row_fallback(want, p.cols());
    if (p.dtype != want)
      notes.push_back(p.name + ": row length " + std::to_string(p.cols()) + " is not a multiple of " +
                      std::to_string(traits(want).block_size) + " (" + std::string(dtype_name(want)) +
                      " block); written as " + std::string(dtype_name(p.dtype)));
  }
  if (!in.imatrix)
    for (const auto& p : plan)
      if (requires_imatrix(p.role, p.dtype)) return Error::usage(missing_imatrix);
  for (const auto& p : plan)
    if (!can_write(p.dtype))
      return Error::usage(o.output + ": type " + in.target.name + " needs " +
                          std::string(dtype_name(p.dtype)) + " for tensor '" + p.name +
                          "', which this build cannot write yet");
  for (const auto& n : notes) note(n);
  return {};
}

// quantize --imatrix: every entry must name a planned tensor and have its size (columns x matrices: the
// stacked experts one per expert, or one for all); every tensor of a type that weighs by it takes its weights
// (an attention or expert weight must have an entry; token_embd and output take one if there is one, as
// llama-quantize does). A type whose tensors weigh nothing by it refuses it: a flag is never taken only to be
// ignored.
Status attach_imatrix(std::vector<PlannedTensor>& plan, const Target& target, const ConvertOptions& o) {
  auto read = read_imatrix(o.imatrix);
  if (!read) return Error{read.error().kind, "--imatrix: " + read.error().message};
  const Imatrix& im = *read;
  const std::string where = "--imatrix " + o.imatrix + ": ";
  std::map<std::string, PlannedTensor*> by_name;
  for (auto& p : plan) by_name[p.name] = &p;
  bool used = false;
  for (const auto& [name, e] : im.entries) {
    auto it = by_name.find(name);
    if (it == by_name.end())
      return Error::data(where + "entry " + quote_name(name) + " names no tensor of " + o.input +
                         " (an importance matrix of another model?)");
    PlannedTensor& p = *it->second;
    const int64_t n_mat = p.shape.size() == 3 ? static_cast<int64_t>(p.parts.size()) : 1;
    const bool counts_ok =
        im.legacy || e.counts.size() == 1 || static_cast<int64_t>(e.counts.size()) == n_mat;
    if (static_cast<int64_t>(e.sums.size()) != p.cols() * n_mat || !counts_ok)
      return Error::data(where + "entry " + quote_name(name) + " has " + std::to_string(e.sums.size()) +
                         " values in " + std::to_string(e.counts.size()) + " matrices; the tensor in " +
                         o.input + " has " + std::to_string(p.cols()) + " columns x " +
                         std::to_string(n_mat) + " matrices (an importance matrix of another model?)");
    if (uses_importance(p.dtype)) {
      p.qw = imatrix_weights(im, e);
      used = true;
    }
  }
  for (const auto& p : plan) {
    const bool layer_matmul = p.role != Role::kTokenEmbd && p.role != Role::kOutput &&
                              p.role != Role::kNorm && p.role != Role::kRouter;
    if (layer_matmul && uses_importance(p.dtype) && p.qw.empty())
      return Error::data(where + "no entry for " + quote_name(p.name) + " of " + o.input);
  }
  if (!used)
    return Error::usage(
        "quantize: --imatrix has no use for type " + target.name +
        ": none of its tensor types weighs its rounding by it (the K-quants and i-quants do)");
  return {};
}

// Already-quantised sources: a note saying which, once.
void note_requantisation(const std::vector<PlannedTensor>& plan, const std::string& input,
                         const std::function<void(const std::string&)>& note) {
  std::map<std::string, int> from;
  for (const auto& p : plan)
    for (const auto& v : p.parts)
      if (traits(v.dtype).block_size > 1 && v.dtype != p.dtype) {
        ++from[std::string(dtype_name(v.dtype))];
        break;
      }
  if (from.empty()) return;
  std::string list;
  for (const auto& [name, n] : from) list += (list.empty() ? "" : ", ") + std::to_string(n) + " " + name;
  note("warning: " + input + " is already quantised (" + list +
       " tensors): they are dequantised and quantised again, which adds the errors of both "
       "(tensors already in their target type are copied unchanged)");
}

// ---------------------------------------------------------------------------------------------
// Streaming fill.

// Drops the page-aligned inside of [p, p + n) from this process's page tables. Output (a shared
// file mapping): the written data stays in the page cache and reaches the file. Input: MADV_PAGEOUT
// reclaims clean pages and never loses data, whatever memory the view is in.
void release_output(uint8_t* p, size_t n) {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + n) & ~(page - 1);
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}
void release_input(const uint8_t* p, size_t n) {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + n) & ~(page - 1);
#ifdef MADV_PAGEOUT
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_PAGEOUT);
#else
  (void)b;
  (void)e;
#endif
}

struct FillContext {
  ThreadPool* pool;
  Progress* progress;
  std::atomic<int64_t>* done;  // elements written so far
  std::thread::id main_thread;
};

// Interleaved row r of a head block comes from rotate-half row j * hd/2 + i, r = 2i + j.
int64_t interleaved_source_row(int64_t r, int64_t head_dim) {
  const int64_t head = r / head_dim, k = r % head_dim;
  return head * head_dim + (k % 2) * (head_dim / 2) + k / 2;
}

void fill_tensor(const PlannedTensor& t, const FillContext& ctx, uint8_t* dst, size_t nbytes) {
  const int64_t cols = t.cols(), rpp = t.rows_per_part();
  const int64_t rows = rpp * static_cast<int64_t>(t.parts.size());
  const size_t stride = row_bytes(t.dtype, cols);
  MX_CHECK(stride * static_cast<size_t>(rows) == nbytes, "%s: %zu bytes for %lld rows of %zu", t.name.c_str(),
           nbytes, static_cast<long long>(rows), stride);
  if (ctx.progress) ctx.progress->set_detail(t.name + " -> " + std::string(dtype_name(t.dtype)));
  // Chunks of about a million elements: big enough to amortise, small enough to balance.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / cols);
  ctx.pool->parallel_for(rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(static_cast<size_t>(cols));  // [cols]
    for (int64_t r = begin; r < end; ++r) {
      const TensorView& v = t.parts[static_cast<size_t>(r / rpp)];
      // This row's importance weights: its expert's (a stacked tensor's part), else the tensor's one row.
      const float* qw = t.qw.empty()                              ? nullptr
                        : t.qw.size() > static_cast<size_t>(cols) ? t.qw.data() + (r / rpp) * cols
                                                                  : t.qw.data();
      const int64_t local = r % rpp;
      const uint8_t* src = v.row(t.rope_heads > 0 ? interleaved_source_row(local, t.head_dim) : local);
      uint8_t* out = dst + static_cast<size_t>(r) * stride;
      if (v.dtype == t.dtype) {
        std::memcpy(out, src, stride);
      } else if (v.dtype == DType::F32) {
        quantize_row_weighted(t.dtype, reinterpret_cast<const float*>(src), out, cols, qw);
      } else {
        dequantize_row(v.dtype, src, buf.data(), cols);
        quantize_row_weighted(t.dtype, buf.data(), out, cols, qw);
      }
    }
    release_output(dst + static_cast<size_t>(begin) * stride, static_cast<size_t>(end - begin) * stride);
    if (t.rope_heads == 0) {  // the source rows of this chunk, part by part
      for (int64_t r = begin; r < end;) {
        const int64_t part = r / rpp, stop = std::min(end, (part + 1) * rpp);
        const TensorView& v = t.parts[static_cast<size_t>(part)];
        release_input(v.row(r % rpp), static_cast<size_t>(stop - r) * v.row_stride());
        r = stop;
      }
    }
    const int64_t now = ctx.done->fetch_add((end - begin) * cols) + (end - begin) * cols;
    if (ctx.progress && std::this_thread::get_id() == ctx.main_thread) ctx.progress->update(now);
  });
  if (t.rope_heads > 0)
    for (const auto& v : t.parts) release_input(v.row(0), v.nbytes());
}

// Writes the planned tensors after the metadata already in `w`.
Status write_plan(GgufWriter& w, const std::vector<PlannedTensor>& plan, const ConvertOptions& o,
                  const std::string& label, uint64_t alignment) {
  int threads = o.threads > 0 ? o.threads : static_cast<int>(std::thread::hardware_concurrency());
  ThreadPool pool(std::max(1, threads));
  int64_t total = 0;
  for (const auto& p : plan) total += p.numel();
  Progress progress(label, total, o.progress ? Progress::Mode::kAuto : Progress::Mode::kOff);
  std::atomic<int64_t> done{0};
  FillContext ctx{&pool, &progress, &done, std::this_thread::get_id()};
  for (const auto& p : plan) {
    GgufTensorSpec s;
    s.name = p.name;
    s.dtype = p.dtype;
    s.shape = p.shape;
    s.fill = [&p, &ctx](uint8_t* dst, size_t n) { fill_tensor(p, ctx, dst, n); };
    w.add_tensor(std::move(s));
  }
  MX_TRY_STATUS(w.write(o.output, 3, alignment));
  progress.update(total);
  progress.finish();
  return {};
}

std::function<void(const std::string&)> note_fn(const ConvertOptions& o) {
  if (o.note) return o.note;
  return [](const std::string& s) { std::fprintf(stderr, "mixtral: %s\n", s.c_str()); };
}

Status check_output_path(const ConvertOptions& o) {
  if (o.output.empty()) return Error::usage("no output file given");
  std::error_code ec;
  if (fs::is_directory(o.output, ec))
    return Error::usage(o.output + ": is a directory (expected a .gguf file)");
  const fs::path parent = fs::path(o.output).parent_path();
  if (!parent.empty() && !fs::is_directory(parent, ec))
    return Error::io(o.output + ": cannot write: directory " + parent.string() + " does not exist");
  if (::access(parent.empty() ? "." : parent.c_str(), W_OK) != 0)
    return Error::io(o.output + ": cannot write: directory " + (parent.empty() ? "." : parent.string()) +
                     " is not writable");
  return {};
}

uint32_t u32(int64_t v) {
  return static_cast<uint32_t>(v);
}

}  // namespace
}  // namespace convert

// ---------------------------------------------------------------------------------------------
// Public entry points.

const std::vector<std::string>& quant_type_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& t : convert::kTargets) v.push_back(t.name);
    return v;
  }();
  return names;
}

std::string quant_policy_text() {
  return "Per-tensor types. Always: norms and the router (ffn_gate_inp) in F32.\n"
         "F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q3_K Q4_K Q5_K Q6_K: every other weight in TYPE.\n"
         "Mixes (llama.cpp's recipes; n = layers, 'more-bits layers' = the first and last n/8 and\n"
         "every third in between; MoE = 8 experts, dense = any other count; GQA4 = heads >= 4 kv\n"
         "heads), every weight not listed in the base type:\n"
         "  Q2_K (base q2_k)   attn_v q3_k (dense; q4_k if GQA4), attn_output q3_k (dense) / q5_k\n"
         "                     (MoE), ffn_down q3_k\n"
         "  Q3_K_S (q3_k)      attn_output q5_k (MoE)\n"
         "  Q3_K_M (q3_k)      attn_v q5_k in layers 0-1 else q4_k (dense), attn_output q4_k (dense) /\n"
         "                     q5_k (MoE), ffn_down q5_k in the first n/16 layers else q4_k\n"
         "  Q3_K_L (q3_k)      attn_v q5_k (dense), attn_output q5_k (dense), ffn_down q5_k\n"
         "  Q4_K_S (q4_k)      attn_v q5_k in layers 0-3 (dense), attn_output q5_k (MoE), ffn_down q5_k in\n"
         "                     the first n/8 layers\n"
         "  Q4_K_M (q4_k)      attn_v q6_k in more-bits layers (dense), attn_output q5_k (MoE), ffn_down\n"
         "                     q6_k in more-bits layers\n"
         "  Q5_K_S (q5_k)      as the base\n"
         "  Q5_K_M (q5_k)      attn_v (dense) and ffn_down q6_k in more-bits layers\n"
         "  IQ4_NL, IQ4_XS     attn_v q5_k (dense, GQA4), attn_output q5_k (MoE), ffn_down q5_k in the\n"
         "                     first n/8 layers without --imatrix\n"
         "  IQ3_M (iq3_s)      attn_v q4_k (dense), attn_output q5_k (MoE) / q4_k (dense), ffn_down q4_k\n"
         "                     in the first n/8 layers (MoE: and in more-bits layers)\n"
         "  IQ3_S (iq3_s)      attn_v q4_k (dense, GQA4), attn_output q5_k (MoE)\n"
         "  IQ3_XS (iq3_s)     attn_q iq3_xxs, attn_k iq3_xxs (dense), attn_v q4_k (dense, GQA4),\n"
         "                     attn_output q5_k (MoE), ffn_gate and ffn_up iq3_xxs in layers n/8..7n/8-1\n"
         "  IQ3_XXS (iq3_xxs)  token_embd iq3_s, output q5_k, attn_q iq2_s, attn_k iq2_s (dense),\n"
         "                     attn_v q4_k (dense, GQA4), attn_output q5_k (MoE) / iq3_s (dense)\n"
         "  IQ2_M (iq2_s), IQ2_S (iq2_xs), IQ2_XS (iq2_xs), IQ2_XXS (iq2_xxs), IQ1_M (iq1_m),\n"
         "  IQ1_S (iq1_s)      output q5_k, attn_k q4_k (MoE), attn_v q4_k (GQA4 or >= 4 experts) else B,\n"
         "                     attn_output q5_k (MoE) / dense: IQ1_M, IQ1_S iq2_xxs, IQ2_M, IQ2_S B;\n"
         "                     token_embd and ffn_down in the first n/8 layers B; B = iq3_s for IQ2_M\n"
         "                     and IQ2_S, q2_k for the others\n"
         "  Where a line does not say otherwise: output q6_k; MoE: attn_k and attn_v q8_0 (the 1- and\n"
         "  2-bit mixes excepted). A tied token_embd takes output's type. Output q8_0 when dim is not a\n"
         "  multiple of the base type's block. --pure: the base type everywhere.\n"
         "Without --imatrix (llama.cpp's rule) a file whose tensors other than token_embd and output\n"
         "include iq1_s, iq1_m, iq2_xxs, iq2_xs, iq2_s or iq3_xxs is refused: IQ1_S, IQ1_M, IQ2_XXS,\n"
         "IQ2_XS, IQ2_S, IQ2_M, IQ3_XXS, IQ3_XS.\n"
         "Rows whose length is not a multiple of the type's block: q2_k/q3_k -> q4_0, q4_k -> q5_0,\n"
         "q5_k -> q5_1, q6_k -> q8_0, the i-quants of 256-blocks -> iq4_nl; then f16 (said on stderr).\n"
         "general.file_type: llama.cpp's number of TYPE (Q3_K, Q4_K, Q5_K alone: the _S number).\n";
}

Status quantize_gguf(const ConvertOptions& o) {
  using namespace convert;
  const auto note = note_fn(o);
  MX_ASSIGN_OR_RETURN(Target target, parse_target(o.type));
  MX_TRY_STATUS(check_output_path(o));
  std::error_code ec;
  if (fs::is_directory(o.input, ec))
    return Error::usage(o.input +
                        ": is a directory; quantize reads a GGUF file (use `mixtral convert` for "
                        "model directories)");
  MX_ASSIGN_OR_RETURN(GgufFile in, GgufFile::open(o.input));
  MX_ASSIGN_OR_RETURN(auto model, load_model(o.input));

  const PolicyInput policy{target, o.pure, !o.imatrix.empty()};
  Planner planner{*model, policy, {}};
  planner.build();
  MX_TRY_STATUS(
      finish_plan(planner.out, policy, o, note, target.name + " needs an importance matrix: --imatrix FILE"));
  if (!o.imatrix.empty()) MX_TRY_STATUS(attach_imatrix(planner.out, target, o));
  note_requantisation(planner.out, o.input, note);

  GgufWriter w;
  for (const auto& [key, value] : in.metadata()) w.set(key, value);
  w.set_u32("general.file_type", target.file_type);
  bool quantised = false;
  for (const auto& p : planner.out) quantised |= traits(p.dtype).block_size > 1;
  if (quantised) w.set_u32("general.quantization_version", 2);
  return write_plan(w, planner.out, o, "quantize", in.alignment());
}

Status convert_model(const ConvertOptions& o) {
  using namespace convert;
  const auto note = note_fn(o);
  if (!o.type.empty()) MX_TRY_STATUS(parse_target(o.type));  // a bad TYPE before any work
  std::error_code ec;
  if (!fs::exists(o.input, ec)) return Error::io(o.input + ": no such directory");
  if (!fs::is_directory(o.input, ec))
    return Error::usage(o.input +
                        ": not a directory (convert reads a Hugging Face or Mistral consolidated "
                        "directory; use `mixtral quantize` for GGUF files)");
  if (!fs::exists(fs::path(o.input) / "config.json") && !fs::exists(fs::path(o.input) / "params.json"))
    return Error::data(o.input + ": a directory without config.json (Hugging Face) or params.json (Mistral)");
  MX_TRY_STATUS(check_output_path(o));
  MX_ASSIGN_OR_RETURN(auto model, load_model(o.input));
  const ModelConfig& c = model->config;

  std::string type = o.type;
  if (type.empty()) {  // the source's float type
    const DType src = model->tok_embd.dtype;
    type = src == DType::F16 ? "F16" : src == DType::BF16 ? "BF16" : "F32";
  }
  MX_ASSIGN_OR_RETURN(Target target, parse_target(type));

  // The tokenizer, through the tokenizer library's readers.
  std::unique_ptr<Tokenizer> tok;
  const fs::path dir(o.input);
  const bool has_tok = fs::exists(dir / "tokenizer.model.v3") || fs::exists(dir / "tokenizer.model") ||
                       fs::exists(dir / "tokenizer.json");
  if (has_tok) {
    MX_ASSIGN_OR_RETURN(tok, Tokenizer::load(o.input));
    if (tok->n_vocab() != c.vocab_size)
      return Error::data(tok->source() + ": " + std::to_string(tok->n_vocab()) +
                         " tokens, but the model's vocabulary size is " + std::to_string(c.vocab_size));
  } else if (!o.no_vocab) {
    return Error::data(
        o.input +
        ": no tokenizer (tokenizer.model.v3, tokenizer.model or tokenizer.json); pass --no-vocab "
        "to write a GGUF without one (llama.cpp will not load it)");
  }

  const PolicyInput policy{target, o.pure, false};
  Planner planner{*model, policy, {}};
  planner.build();
  MX_TRY_STATUS(finish_plan(planner.out, policy, o, note,
                            target.name +
                                " needs an importance matrix: convert to F16, then `mixtral quantize "
                                "--imatrix FILE`"));

  GgufWriter w;
  const std::string a = "llama";
  std::string name = fs::path(o.input).lexically_normal().filename().string();
  if (name.empty() || name == ".")
    name = fs::absolute(o.input, ec).lexically_normal().parent_path().filename().string();
  w.set_string("general.architecture", a);
  w.set_string("general.name", name);
  w.set_u32("general.file_type", target.file_type);
  int64_t ctx = c.max_seq_len;
  if (o.context_length > 0) {
    ctx = o.context_length;
  } else if (ctx <= 0) {
    ctx = 32768;
    note(o.input + ": the config gives no context length; writing " + a +
         ".context_length 32768 (--ctx sets it)");
  }
  w.set_u32(a + ".vocab_size", u32(c.vocab_size));
  w.set_u32(a + ".context_length", u32(ctx));
  w.set_u32(a + ".embedding_length", u32(c.dim));
  w.set_u32(a + ".block_count", u32(c.n_layers));
  w.set_u32(a + ".feed_forward_length", u32(c.ffn_dim));
  w.set_u32(a + ".attention.head_count", u32(c.n_heads));
  w.set_u32(a + ".attention.head_count_kv", u32(c.n_kv_heads));
  w.set_u32(a + ".attention.key_length", u32(c.head_dim));
  w.set_u32(a + ".attention.value_length", u32(c.head_dim));
  w.set_u32(a + ".rope.dimension_count", u32(c.head_dim));
  w.set_f32(a + ".rope.freq_base", c.rope_theta);
  w.set_f32(a + ".attention.layer_norm_rms_epsilon", c.norm_eps);
  if (!model->layers.empty() && !model->layers[0].router.empty()) {
    w.set_u32(a + ".expert_count", u32(c.n_experts));
    w.set_u32(a + ".expert_used_count", u32(c.n_experts_used));
  }
  if (c.sliding_window > 0) {
    w.set_u32(a + ".attention.sliding_window", u32(c.sliding_window));
    note(o.input + ": sliding_window " + std::to_string(c.sliding_window) +
         " is recorded, but llama.cpp's llama architecture ignores it (mixtral.cpp honours it)");
  }
  bool quantised = false;
  for (const auto& p : planner.out) quantised |= traits(p.dtype).block_size > 1;
  if (quantised) w.set_u32("general.quantization_version", 2);

  if (tok) {
    const int32_t n = tok->n_vocab();
    std::vector<std::string> pieces(static_cast<size_t>(n));
    std::vector<float> scores(static_cast<size_t>(n));
    std::vector<int32_t> types(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) {
      pieces[static_cast<size_t>(i)] = tok->piece(i);
      scores[static_cast<size_t>(i)] = tok->score(i);
      types[static_cast<size_t>(i)] = static_cast<int32_t>(tok->type(i));
    }
    w.set_string("tokenizer.ggml.model", "llama");
    w.set_string_array("tokenizer.ggml.tokens", pieces);
    w.set_f32_array("tokenizer.ggml.scores", scores);
    w.set_i32_array("tokenizer.ggml.token_type", types);
    if (tok->bos_id() >= 0) w.set_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(tok->bos_id()));
    if (tok->eos_id() >= 0) w.set_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(tok->eos_id()));
    if (tok->unk_id() >= 0)
      w.set_u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(tok->unk_id()));
    w.set_bool("tokenizer.ggml.add_bos_token", tok->add_bos());
    w.set_bool("tokenizer.ggml.add_eos_token", tok->add_eos());
    if (!tok->chat_template().empty()) w.set_string("tokenizer.chat_template", tok->chat_template());
  }
  return write_plan(w, planner.out, o, "convert", 32);
}

}  // namespace mixtral
