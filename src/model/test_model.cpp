// A random Mixtral written in every layout, the same weights in each.
//
// Every weight element is a pure function of (seed, canonical tensor name, flat index) in Hugging
// Face layout (q/k rows in rotate-half order): a counter-based hash (splitmix64) turned into a
// uniform number. Any tensor, in any layout, type or row order, is therefore generated on its own,
// row by row into small buffers, quantised with quantize_row and written straight into the
// memory-mapped output file through the writers' fill callbacks. Nothing holds a whole tensor, so
// full-width files (dim 4096, ffn 14336) stream to disk with a small resident set.
#include "model/test_model.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "io/gguf.h"
#include "io/safetensors.h"
#include "tensor/quant.h"

namespace mixtral {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

// ---------------------------------------------------------------------------------------------
// Canonical weights.

uint64_t mix64(uint64_t z) {  // splitmix64's finaliser
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

// One weight tensor of the canonical (Hugging Face) model: value(i) = center + amp * u_i with u_i
// uniform in [-1, 1) from the hash of (seed, name, i). Matrices are [rows, cols]; vectors have rows 1.
struct CanonTensor {
  std::string name;  // Hugging Face name: the hash key
  int64_t rows = 1, cols = 0;
  float center = 0, amp = 0;
  int64_t rope_heads = 0;  // > 0: q/k rows (this many heads of head_dim rows), permuted for interleaved RoPE
  int64_t head_dim = 0;
  uint64_t key = 0;

  // Row r of the tensor as the HF file holds it, as floats.
  void hf_row(int64_t r, float* out) const {
    uint64_t state = key + static_cast<uint64_t>(r * cols) * kGolden;
    for (int64_t c = 0; c < cols; ++c) {
      state += kGolden;
      const double u = static_cast<double>(mix64(state) >> 11) * 0x1.0p-53 * 2.0 - 1.0;  // [-1, 1)
      out[c] = static_cast<float>(center + amp * u);
    }
  }
  // Row r in interleaved RoPE order (GGUF, consolidated): within each head of hd rows,
  // interleaved row 2i + j is HF row j * hd/2 + i.
  int64_t interleaved_source_row(int64_t r) const {
    if (rope_heads == 0) return r;
    const int64_t head = r / head_dim, k = r % head_dim;
    const int64_t i = k / 2, j = k % 2;
    return head * head_dim + j * (head_dim / 2) + i;
  }
};

CanonTensor canon(uint64_t seed, std::string name, int64_t rows, int64_t cols, float center, float amp) {
  CanonTensor t;
  t.key = mix64(seed ^ mix64(fnv1a(name)));
  t.name = std::move(name);
  t.rows = rows;
  t.cols = cols;
  t.center = center;
  t.amp = amp;
  return t;
}

// Uniform with standard deviation `std`: amplitude std * sqrt(3).
float amp_for_std(double std) {
  return static_cast<float>(std * std::sqrt(3.0));
}

// The whole canonical model, by tensor, with each tensor's distribution.
struct CanonModel {
  ModelConfig c;
  CanonTensor embed, norm, lm_head;
  struct Layer {
    CanonTensor attn_norm, q, k, v, o, ffn_norm, gate;
    std::vector<CanonTensor> w1, w2, w3;  // per expert
  };
  std::vector<Layer> layers;
};

CanonModel build_canon(const ModelConfig& c, uint64_t seed) {
  CanonModel m;
  m.c = c;
  const double inv_dim = 1.0 / std::sqrt(static_cast<double>(c.dim));
  const double inv_ffn = 1.0 / std::sqrt(static_cast<double>(c.ffn_dim));
  const double inv_att = 1.0 / std::sqrt(static_cast<double>(c.n_heads * c.head_dim));
  const float norm_noise = 0.1f;  // norm weights 1 +- 0.1
  m.embed = canon(seed, "model.embed_tokens.weight", c.vocab_size, c.dim, 0, amp_for_std(1.0));
  m.norm = canon(seed, "model.norm.weight", 1, c.dim, 1, norm_noise);
  m.lm_head = canon(seed, "lm_head.weight", c.vocab_size, c.dim, 0, amp_for_std(inv_dim));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    CanonModel::Layer L;
    L.attn_norm = canon(seed, p + "input_layernorm.weight", 1, c.dim, 1, norm_noise);
    L.q = canon(seed, p + "self_attn.q_proj.weight", c.n_heads * c.head_dim, c.dim, 0, amp_for_std(inv_dim));
    L.q.rope_heads = c.n_heads;
    L.q.head_dim = c.head_dim;
    L.k =
        canon(seed, p + "self_attn.k_proj.weight", c.n_kv_heads * c.head_dim, c.dim, 0, amp_for_std(inv_dim));
    L.k.rope_heads = c.n_kv_heads;
    L.k.head_dim = c.head_dim;
    L.v =
        canon(seed, p + "self_attn.v_proj.weight", c.n_kv_heads * c.head_dim, c.dim, 0, amp_for_std(inv_dim));
    L.o = canon(seed, p + "self_attn.o_proj.weight", c.dim, c.n_heads * c.head_dim, 0, amp_for_std(inv_att));
    L.ffn_norm = canon(seed, p + "post_attention_layernorm.weight", 1, c.dim, 1, norm_noise);
    // A wide router so the top-k choice has clear margins.
    L.gate =
        canon(seed, p + "block_sparse_moe.gate.weight", c.n_experts, c.dim, 0, amp_for_std(3.0 * inv_dim));
    for (int64_t e = 0; e < c.n_experts; ++e) {
      const std::string q = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      L.w1.push_back(canon(seed, q + "w1.weight", c.ffn_dim, c.dim, 0, amp_for_std(inv_dim)));
      L.w2.push_back(canon(seed, q + "w2.weight", c.dim, c.ffn_dim, 0, amp_for_std(inv_ffn)));
      L.w3.push_back(canon(seed, q + "w3.weight", c.ffn_dim, c.dim, 0, amp_for_std(inv_dim)));
    }
    m.layers.push_back(std::move(L));
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// One tensor of an output file: one or more canonical tensors stacked along the outermost
// dimension (merged GGUF experts), in a given row order and type.

struct OutTensor {
  std::string name;  // as stored
  DType dtype = DType::F32;
  std::vector<int64_t> shape;             // row-major
  std::vector<const CanonTensor*> parts;  // stacked, each [rows, cols]
  bool interleave = false;                // q/k rows in interleaved RoPE order
};

OutTensor out_tensor(std::string name, DType t, const CanonTensor& c, bool vector, bool interleave = false) {
  OutTensor o;
  o.name = std::move(name);
  o.dtype = t;
  o.shape = vector ? std::vector<int64_t>{c.cols} : std::vector<int64_t>{c.rows, c.cols};
  o.parts = {&c};
  o.interleave = interleave;
  return o;
}

// Drops written pages of [p, p + n) from this process's page tables (the page-aligned inside of
// the range only, which no other chunk writes). The data stays in the page cache of the shared
// file mapping and is written back by the kernel, so the resident set stays small.
void release_pages(uint8_t* p, size_t n) {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + n) & ~(page - 1);
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

// Generates the tensor's bytes into dst (nbytes long), rows in parallel.
void fill_tensor(const OutTensor& t, ThreadPool& pool, uint8_t* dst, size_t nbytes) {
  const int64_t cols = t.parts[0]->cols;
  const int64_t rows_per_part = t.parts[0]->rows;
  const int64_t rows = rows_per_part * static_cast<int64_t>(t.parts.size());
  const size_t stride = row_bytes(t.dtype, cols);
  MX_CHECK(stride * static_cast<size_t>(rows) == nbytes, "%s: %zu bytes for %lld rows of %zu", t.name.c_str(),
           nbytes, static_cast<long long>(rows), stride);
  // Chunks of about a million elements: big enough to amortise, small enough to balance.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / cols);
  pool.parallel_for(rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(static_cast<size_t>(cols));  // [cols]
    for (int64_t r = begin; r < end; ++r) {
      const CanonTensor& c = *t.parts[static_cast<size_t>(r / rows_per_part)];
      const int64_t local = r % rows_per_part;
      c.hf_row(t.interleave ? c.interleaved_source_row(local) : local, buf.data());
      quantize_row(t.dtype, buf.data(), dst + static_cast<size_t>(r) * stride, cols);
    }
    release_pages(dst + static_cast<size_t>(begin) * stride, static_cast<size_t>(end - begin) * stride);
  });
}

// ---------------------------------------------------------------------------------------------
// Layouts.

bool is_float(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

// Shortest decimal that reads back as the same float, as a double (1e-5f -> 1e-05, not 9.99999974e-06).
double float_as_decimal(float f) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, f);
  *res.ptr = '\0';
  return std::strtod(buf, nullptr);
}

Status write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return Error::io(path + ": cannot create");
  f << text;
  f.close();
  if (!f) return Error::io(path + ": cannot write");
  return {};
}

Status make_dir(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) return Error::io(path + ": cannot create directory: " + ec.message());
  return {};
}

const char* torch_dtype(DType t) {
  return t == DType::F32 ? "float32" : t == DType::F16 ? "float16" : "bfloat16";
}

// The HF/consolidated tensor list in HF order, each with its name in the given family.
std::vector<OutTensor> hf_tensors(const CanonModel& m, DType t) {
  std::vector<OutTensor> v;
  v.push_back(out_tensor(m.embed.name, t, m.embed, false));
  for (const auto& L : m.layers) {
    v.push_back(out_tensor(L.attn_norm.name, t, L.attn_norm, true));
    v.push_back(out_tensor(L.q.name, t, L.q, false));
    v.push_back(out_tensor(L.k.name, t, L.k, false));
    v.push_back(out_tensor(L.v.name, t, L.v, false));
    v.push_back(out_tensor(L.o.name, t, L.o, false));
    v.push_back(out_tensor(L.ffn_norm.name, t, L.ffn_norm, true));
    v.push_back(out_tensor(L.gate.name, t, L.gate, false));
    for (size_t e = 0; e < L.w1.size(); ++e) {
      v.push_back(out_tensor(L.w1[e].name, t, L.w1[e], false));
      v.push_back(out_tensor(L.w2[e].name, t, L.w2[e], false));
      v.push_back(out_tensor(L.w3[e].name, t, L.w3[e], false));
    }
  }
  v.push_back(out_tensor(m.norm.name, t, m.norm, true));
  if (!m.c.tie_embeddings) v.push_back(out_tensor(m.lm_head.name, t, m.lm_head, false));
  return v;
}

size_t tensor_bytes(const OutTensor& o) {
  int64_t n = 1;
  for (int64_t d : o.shape) n *= d;
  return row_bytes(o.dtype, n);
}

std::vector<SafetensorsTensorSpec> st_specs(const std::vector<OutTensor>& ts, ThreadPool& pool) {
  std::vector<SafetensorsTensorSpec> specs;
  for (const auto& o : ts) {
    SafetensorsTensorSpec s;
    s.name = o.name;
    s.dtype = o.dtype;
    s.shape = o.shape;
    s.fill = [&o, &pool](uint8_t* dst, size_t n) { fill_tensor(o, pool, dst, n); };
    specs.push_back(std::move(s));
  }
  return specs;
}

std::string hf_config_json(const ModelConfig& c, DType t) {
  json j;
  j["architectures"] = json::array({"MixtralForCausalLM"});
  j["model_type"] = "mixtral";
  j["hidden_size"] = c.dim;
  j["intermediate_size"] = c.ffn_dim;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["rms_norm_eps"] = float_as_decimal(c.norm_eps);
  j["rope_theta"] = float_as_decimal(c.rope_theta);
  j["num_local_experts"] = c.n_experts;
  j["num_experts_per_tok"] = c.n_experts_used;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_seq_len > 0 ? c.max_seq_len : 4096;
  j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
  j["tie_word_embeddings"] = c.tie_embeddings;
  j["torch_dtype"] = torch_dtype(t);
  j["bos_token_id"] = 1;
  j["eos_token_id"] = 2;
  return j.dump(2) + "\n";
}

// The SentencePiece tokenizer.model of the vocabulary (defined beside make_vocab); written into the
// HF and consolidated directories of a v3 vocabulary.
Status write_sp_model(const std::string& path, const TestModelSpec& spec);

void progress(const TestModelSpec& spec, const std::string& what) {
  if (spec.progress) std::fprintf(stderr, "make-test-model: writing %s\n", what.c_str());
}

Status write_hf(const TestModelSpec& spec, const CanonModel& m, DType t, ThreadPool& pool) {
  const std::string dir = spec.out_dir + "/hf-" + std::string(dtype_name(t));
  progress(spec, dir);
  MX_TRY_STATUS(make_dir(dir));
  MX_TRY_STATUS(write_text(dir + "/config.json", hf_config_json(m.c, t)));
  if (spec.vocab_format == "v3") MX_TRY_STATUS(write_sp_model(dir + "/tokenizer.model", spec));
  const auto ts = hf_tensors(m, t);
  return write_safetensors(dir + "/model.safetensors", st_specs(ts, pool));
}

Status write_hf_sharded(const TestModelSpec& spec, const CanonModel& m, DType t, ThreadPool& pool) {
  const std::string dir = spec.out_dir + "/hf-" + std::string(dtype_name(t)) + "-sharded";
  progress(spec, dir);
  MX_TRY_STATUS(make_dir(dir));
  MX_TRY_STATUS(write_text(dir + "/config.json", hf_config_json(m.c, t)));
  if (spec.vocab_format == "v3") MX_TRY_STATUS(write_sp_model(dir + "/tokenizer.model", spec));
  const auto ts = hf_tensors(m, t);
  constexpr size_t kShards = 3;
  // Split the tensors in order into 3 shards of about equal bytes (each at least one tensor).
  size_t total = 0;
  for (const auto& o : ts) total += tensor_bytes(o);
  std::vector<std::vector<OutTensor>> shards(kShards);
  size_t acc = 0;  // bytes before tensor i
  size_t s = 0;    // current shard
  for (size_t i = 0; i < ts.size(); ++i) {
    // Move to the next shard when the bytes so far say so, or when the tensors left are just
    // enough to give every later shard one; never skip a shard.
    const size_t want = std::min<size_t>(kShards - 1, acc * kShards / std::max<size_t>(total, 1));
    const size_t left = ts.size() - i;
    if (s + 1 < kShards && !shards[s].empty() && (want > s || left <= kShards - 1 - s)) ++s;
    shards[s].push_back(ts[i]);
    acc += tensor_bytes(ts[i]);
  }
  json index;
  index["metadata"]["total_size"] = total;
  json weight_map = json::object();
  for (size_t k = 0; k < kShards; ++k) {
    char fname[64];
    std::snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", k + 1, kShards);
    for (const auto& o : shards[k]) weight_map[o.name] = fname;
    MX_TRY_STATUS(write_safetensors(dir + "/" + fname, st_specs(shards[k], pool)));
  }
  index["weight_map"] = weight_map;
  return write_text(dir + "/model.safetensors.index.json", index.dump(2) + "\n");
}

Status write_consolidated(const TestModelSpec& spec, const CanonModel& m, DType t, ThreadPool& pool) {
  const ModelConfig& c = m.c;
  const std::string dir = spec.out_dir + "/consolidated-" + std::string(dtype_name(t));
  progress(spec, dir);
  MX_TRY_STATUS(make_dir(dir));
  json p;
  p["dim"] = c.dim;
  p["n_layers"] = c.n_layers;
  p["head_dim"] = c.head_dim;
  p["hidden_dim"] = c.ffn_dim;
  p["n_heads"] = c.n_heads;
  p["n_kv_heads"] = c.n_kv_heads;
  p["norm_eps"] = float_as_decimal(c.norm_eps);
  p["vocab_size"] = c.vocab_size;
  p["rope_theta"] = float_as_decimal(c.rope_theta);
  if (c.sliding_window > 0) p["sliding_window"] = c.sliding_window;
  p["moe"] = {{"num_experts", c.n_experts}, {"num_experts_per_tok", c.n_experts_used}};
  MX_TRY_STATUS(write_text(dir + "/params.json", p.dump(2) + "\n"));
  if (spec.vocab_format == "v3") MX_TRY_STATUS(write_sp_model(dir + "/tokenizer.model.v3", spec));

  std::vector<OutTensor> ts;
  ts.push_back(out_tensor("tok_embeddings.weight", t, m.embed, false));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const auto& L = m.layers[static_cast<size_t>(l)];
    const std::string p2 = "layers." + std::to_string(l) + ".";
    ts.push_back(out_tensor(p2 + "attention_norm.weight", t, L.attn_norm, true));
    ts.push_back(out_tensor(p2 + "attention.wq.weight", t, L.q, false, true));
    ts.push_back(out_tensor(p2 + "attention.wk.weight", t, L.k, false, true));
    ts.push_back(out_tensor(p2 + "attention.wv.weight", t, L.v, false));
    ts.push_back(out_tensor(p2 + "attention.wo.weight", t, L.o, false));
    ts.push_back(out_tensor(p2 + "ffn_norm.weight", t, L.ffn_norm, true));
    ts.push_back(out_tensor(p2 + "feed_forward.gate.weight", t, L.gate, false));
    for (size_t e = 0; e < L.w1.size(); ++e) {
      const std::string q = p2 + "feed_forward.experts." + std::to_string(e) + ".";
      ts.push_back(out_tensor(q + "w1.weight", t, L.w1[e], false));
      ts.push_back(out_tensor(q + "w2.weight", t, L.w2[e], false));
      ts.push_back(out_tensor(q + "w3.weight", t, L.w3[e], false));
    }
  }
  ts.push_back(out_tensor("norm.weight", t, m.norm, true));
  // Consolidated files always carry output.weight (Mistral never ties), even for a tied config.
  ts.push_back(out_tensor("output.weight", t, m.c.tie_embeddings ? m.embed : m.lm_head, false));
  return write_safetensors(dir + "/consolidated.safetensors", st_specs(ts, pool));
}

// Mistral's v3 control pieces at their ids in mistral-common's v3 SentencePiece vocabulary (after <unk>,
// <s>, </s>; its tests spell [INST] 3, [/INST] 4, [AVAILABLE_TOOLS] 6, [/AVAILABLE_TOOLS] 7).
constexpr const char* kV3Controls[] = {
    "[INST]",         "[/INST]",        "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]"};
constexpr int64_t kNumV3Controls = sizeof kV3Controls / sizeof kV3Controls[0];

// The smallest vocabulary: the special and byte pieces and 3 normal ones.
int64_t min_vocab(const std::string& format) {
  return 3 + (format == "v3" ? kNumV3Controls : 0) + 256 + 3;
}

// A SentencePiece-style vocabulary llama.cpp accepts: <unk>, <s>, </s>, (v3: the control pieces above),
// the 256 byte tokens, then unique printable pieces. Scores: 0 up to the first normal piece, then
// -(id - first normal id), as SentencePiece's BPE merge order.
struct Vocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;  // SentencePiece piece types: 1 normal, 2 unknown, 3 control, 6 byte
};

Vocab make_vocab(int64_t n, const std::string& format) {
  Vocab v;
  std::vector<std::pair<std::string, int32_t>> special = {{"<unk>", 2}, {"<s>", 3}, {"</s>", 3}};
  if (format == "v3")
    for (const char* c : kV3Controls) special.emplace_back(c, 3);
  const int64_t first_normal = static_cast<int64_t>(special.size()) + 256;
  auto add = [&](std::string s, int32_t type) {
    const auto id = static_cast<int64_t>(v.tokens.size());
    v.scores.push_back(id < first_normal ? 0.0f : -static_cast<float>(id - first_normal));
    v.tokens.push_back(std::move(s));
    v.types.push_back(type);
  };
  for (auto& [piece, type] : special) add(piece, type);
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    add(buf, 6);  // byte
  }
  // "▁a".."▁z", "a".."z", then "▁aa", "▁ab", ... : pieces of growing length over a-z.
  const std::string space = "\xe2\x96\x81";  // U+2581
  std::set<std::string> seen;
  for (int64_t k = 0; static_cast<int64_t>(v.tokens.size()) < n; ++k) {
    // k -> a word over a-z (bijective base 26), alternately with and without the space mark.
    int64_t x = k / 2 + 1;
    std::string word;
    while (x > 0) {
      --x;
      word.insert(word.begin(), static_cast<char>('a' + x % 26));
      x /= 26;
    }
    std::string piece = (k % 2 == 0 ? space : "") + word;
    if (seen.insert(piece).second) add(piece, 1);  // normal
  }
  return v;
}

// Protocol-buffer wire format, just what a SentencePiece ModelProto needs.
void pb_varint(std::string& out, uint64_t v) {
  for (; v >= 0x80; v >>= 7) out += static_cast<char>((v & 0x7f) | 0x80);
  out += static_cast<char>(v);
}
void pb_int(std::string& out, uint32_t field, int64_t v) {  // wire type 0; negatives as 10-byte varints
  pb_varint(out, uint64_t{field} << 3);
  pb_varint(out, static_cast<uint64_t>(v));
}
void pb_bytes(std::string& out, uint32_t field, std::string_view b) {  // wire type 2
  pb_varint(out, (uint64_t{field} << 3) | 2);
  pb_varint(out, b.size());
  out.append(b);
}
void pb_float(std::string& out, uint32_t field, float f) {  // wire type 5, little-endian
  pb_varint(out, (uint64_t{field} << 3) | 5);
  uint32_t u = 0;
  std::memcpy(&u, &f, 4);
  for (int i = 0; i < 4; ++i) out += static_cast<char>((u >> (8 * i)) & 0xff);
}

// sentencepiece_model.proto: ModelProto {1: repeated SentencePiece {1 piece, 2 score, 3 type},
// 2: TrainerSpec {3 model_type (2 = BPE), 4 vocab_size, 35 byte_fallback, 40..43 unk/bos/eos/pad ids},
// 3: NormalizerSpec {1 name, 3 add_dummy_prefix, 4 remove_extra_whitespaces, 5 escape_whitespaces}}, as
// Mistral's tokenizer.model files set them (identity normaliser, dummy prefix, byte fallback).
Status write_sp_model(const std::string& path, const TestModelSpec& spec) {
  const Vocab v = make_vocab(spec.config.vocab_size, spec.vocab_format);
  std::string proto, msg;
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    msg.clear();
    pb_bytes(msg, 1, v.tokens[i]);
    pb_float(msg, 2, v.scores[i]);
    pb_int(msg, 3, v.types[i]);
    pb_bytes(proto, 1, msg);
  }
  msg.clear();
  pb_int(msg, 3, 2);
  pb_int(msg, 4, static_cast<int64_t>(v.tokens.size()));
  pb_int(msg, 35, 1);
  pb_int(msg, 40, 0);
  pb_int(msg, 41, 1);
  pb_int(msg, 42, 2);
  pb_int(msg, 43, -1);
  pb_bytes(proto, 2, msg);
  msg.clear();
  pb_bytes(msg, 1, "identity");
  pb_int(msg, 3, 1);
  pb_int(msg, 4, 0);
  pb_int(msg, 5, 1);
  pb_bytes(proto, 3, msg);
  return write_text(path, proto);
}

uint32_t gguf_file_type(DType t) {
  switch (t) {
    case DType::F32:
      return 0;
    case DType::F16:
      return 1;
    case DType::Q4_0:
      return 2;
    case DType::Q8_0:
      return 7;
    case DType::BF16:
      return 32;
    // llama.cpp's LLAMA_FTYPE_MOSTLY_* (the _S variants: every matrix in the one type).
    case DType::Q4_1:
      return 3;
    case DType::Q5_0:
      return 8;
    case DType::Q5_1:
      return 9;
    case DType::Q2_K:
      return 10;
    case DType::Q3_K:
      return 11;
    case DType::Q4_K:
      return 14;
    case DType::Q5_K:
      return 16;
    case DType::Q6_K:
      return 18;
    default:
      return 1024;  // LLAMA_FTYPE_GUESSED: no file type names it (q8_k)
  }
}

Status write_gguf(const TestModelSpec& spec, const CanonModel& m, DType t, bool merged, ThreadPool& pool) {
  const ModelConfig& c = m.c;
  const std::string path =
      spec.out_dir + (merged ? "/gguf-merged-" : "/gguf-legacy-") + std::string(dtype_name(t)) + ".gguf";
  progress(spec, path);
  GgufWriter w;
  const std::string a = "llama";
  w.set_string("general.architecture", a);
  w.set_string("general.name", "mixtral-test");
  w.set_u32("general.alignment", 32);
  w.set_u32("general.file_type", gguf_file_type(t));
  w.set_u32(a + ".context_length", static_cast<uint32_t>(c.max_seq_len > 0 ? c.max_seq_len : 4096));
  w.set_u32(a + ".embedding_length", static_cast<uint32_t>(c.dim));
  w.set_u32(a + ".block_count", static_cast<uint32_t>(c.n_layers));
  w.set_u32(a + ".feed_forward_length", static_cast<uint32_t>(c.ffn_dim));
  w.set_u32(a + ".attention.head_count", static_cast<uint32_t>(c.n_heads));
  w.set_u32(a + ".attention.head_count_kv", static_cast<uint32_t>(c.n_kv_heads));
  w.set_u32(a + ".attention.key_length", static_cast<uint32_t>(c.head_dim));
  w.set_u32(a + ".attention.value_length", static_cast<uint32_t>(c.head_dim));
  w.set_u32(a + ".rope.dimension_count", static_cast<uint32_t>(c.head_dim));
  w.set_f32(a + ".rope.freq_base", c.rope_theta);
  w.set_f32(a + ".attention.layer_norm_rms_epsilon", c.norm_eps);
  w.set_u32(a + ".expert_count", static_cast<uint32_t>(c.n_experts));
  w.set_u32(a + ".expert_used_count", static_cast<uint32_t>(c.n_experts_used));
  w.set_u32(a + ".vocab_size", static_cast<uint32_t>(c.vocab_size));
  if (c.sliding_window > 0)
    w.set_u32(a + ".attention.sliding_window", static_cast<uint32_t>(c.sliding_window));

  const Vocab v = make_vocab(c.vocab_size, spec.vocab_format);
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string_array("tokenizer.ggml.tokens", v.tokens);
  w.set_f32_array("tokenizer.ggml.scores", v.scores);
  w.set_i32_array("tokenizer.ggml.token_type", v.types);
  w.set_u32("tokenizer.ggml.bos_token_id", 1);
  w.set_u32("tokenizer.ggml.eos_token_id", 2);
  w.set_u32("tokenizer.ggml.unknown_token_id", 0);
  w.set_bool("tokenizer.ggml.add_bos_token", true);
  w.set_bool("tokenizer.ggml.add_eos_token", false);

  // Norms and the router stay F32 in GGUF; everything else is in t.
  std::vector<OutTensor> ts;
  ts.push_back(out_tensor("token_embd.weight", t, m.embed, false));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const auto& L = m.layers[static_cast<size_t>(l)];
    const std::string p = "blk." + std::to_string(l) + ".";
    ts.push_back(out_tensor(p + "attn_norm.weight", DType::F32, L.attn_norm, true));
    ts.push_back(out_tensor(p + "attn_q.weight", t, L.q, false, true));
    ts.push_back(out_tensor(p + "attn_k.weight", t, L.k, false, true));
    ts.push_back(out_tensor(p + "attn_v.weight", t, L.v, false));
    ts.push_back(out_tensor(p + "attn_output.weight", t, L.o, false));
    ts.push_back(out_tensor(p + "ffn_norm.weight", DType::F32, L.ffn_norm, true));
    ts.push_back(out_tensor(p + "ffn_gate_inp.weight", DType::F32, L.gate, false));
    if (merged) {
      auto stacked = [&](const std::string& name, const std::vector<CanonTensor>& experts) {
        OutTensor o;
        o.name = name;
        o.dtype = t;
        o.shape = {c.n_experts, experts[0].rows, experts[0].cols};
        for (const auto& e : experts) o.parts.push_back(&e);
        return o;
      };
      ts.push_back(stacked(p + "ffn_gate_exps.weight", L.w1));
      ts.push_back(stacked(p + "ffn_down_exps.weight", L.w2));
      ts.push_back(stacked(p + "ffn_up_exps.weight", L.w3));
    } else {
      for (size_t e = 0; e < L.w1.size(); ++e) {
        const std::string es = std::to_string(e);
        ts.push_back(out_tensor(p + "ffn_gate." + es + ".weight", t, L.w1[e], false));
        ts.push_back(out_tensor(p + "ffn_down." + es + ".weight", t, L.w2[e], false));
        ts.push_back(out_tensor(p + "ffn_up." + es + ".weight", t, L.w3[e], false));
      }
    }
  }
  ts.push_back(out_tensor("output_norm.weight", DType::F32, m.norm, true));
  if (!c.tie_embeddings) ts.push_back(out_tensor("output.weight", t, m.lm_head, false));

  for (const auto& o : ts) {
    GgufTensorSpec s;
    s.name = o.name;
    s.dtype = o.dtype;
    s.shape = o.shape;
    s.fill = [&o, &pool](uint8_t* dst, size_t n) { fill_tensor(o, pool, dst, n); };
    w.add_tensor(std::move(s));
  }
  return w.write(path, 3, 32);
}

// ---------------------------------------------------------------------------------------------
// Validation: one usage error naming the field.

Status validate(const TestModelSpec& spec) {
  const ModelConfig& c = spec.config;
  auto bad = [](const std::string& field, int64_t v, const std::string& why) -> Status {
    return Error::usage("make-test-model: " + field + " " + std::to_string(v) + ": " + why);
  };
  if (spec.out_dir.empty()) return Error::usage("make-test-model: no output directory");
  if (c.dim <= 0) return bad("dim", c.dim, "must be positive");
  if (c.n_layers <= 0) return bad("layers", c.n_layers, "must be positive");
  if (c.n_heads <= 0) return bad("heads", c.n_heads, "must be positive");
  if (c.n_kv_heads <= 0) return bad("kv-heads", c.n_kv_heads, "must be positive");
  if (c.n_heads % c.n_kv_heads != 0)
    return bad("kv-heads", c.n_kv_heads, "does not divide heads " + std::to_string(c.n_heads));
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) return bad("head-dim", c.head_dim, "must be positive and even");
  if (c.ffn_dim <= 0) return bad("ffn", c.ffn_dim, "must be positive");
  if (c.n_experts <= 0) return bad("experts", c.n_experts, "must be positive");
  if (c.n_experts_used <= 0 || c.n_experts_used > c.n_experts)
    return bad("top-k", c.n_experts_used, "must be in [1, experts = " + std::to_string(c.n_experts) + "]");
  if (spec.vocab_format != "v1" && spec.vocab_format != "v3")
    return Error::usage("make-test-model: vocab-format '" + spec.vocab_format + "': unknown (v1, v3)");
  if (c.vocab_size < min_vocab(spec.vocab_format))
    return bad("vocab", c.vocab_size,
               "must be at least " + std::to_string(min_vocab(spec.vocab_format)) + " (" +
                   (spec.vocab_format == "v3" ? "10" : "3") +
                   " special tokens, 256 byte tokens and a few pieces)");
  if (c.sliding_window < 0) return bad("sliding-window", c.sliding_window, "must be >= 0 (0: none)");
  if (c.max_seq_len < 0) return bad("ctx", c.max_seq_len, "must be >= 0");
  if (!(c.norm_eps > 0) || !std::isfinite(c.norm_eps))
    return Error::usage("make-test-model: norm eps must be a positive number");
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta))
    return Error::usage("make-test-model: rope-theta must be a positive number");
  constexpr int64_t kU32Max = 0xffffffffLL;
  for (auto [field, v] : {std::pair<const char*, int64_t>{"dim", c.dim},
                          {"ffn", c.ffn_dim},
                          {"layers", c.n_layers},
                          {"vocab", c.vocab_size},
                          {"experts", c.n_experts},
                          {"ctx", c.max_seq_len}})
    if (v > kU32Max) return bad(field, v, "too large");

  if (spec.types.empty()) return Error::usage("make-test-model: types: none given");
  if (spec.layouts.empty()) return Error::usage("make-test-model: layouts: none given");
  bool any_float = false;
  for (DType t : spec.types) {
    if (!traits(t).quantizable)
      return Error::usage("make-test-model: types: cannot write type '" + std::string(dtype_name(t)) +
                          "' (f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k, "
                          "q8_k, iq1_s, iq1_m, iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq3_s, iq4_nl, iq4_xs)");
    any_float |= is_float(t);
    const int64_t block = traits(t).block_size;
    if (block > 1) {
      const std::string tn(dtype_name(t));
      if (c.dim % block)
        return bad("dim", c.dim, "must be a multiple of " + std::to_string(block) + " for " + tn);
      if (c.ffn_dim % block)
        return bad("ffn", c.ffn_dim, "must be a multiple of " + std::to_string(block) + " for " + tn);
      if ((c.n_heads * c.head_dim) % block)
        return bad("heads * head-dim", c.n_heads * c.head_dim,
                   "must be a multiple of " + std::to_string(block) + " for " + tn);
    }
  }
  static const std::set<std::string> kLayouts = {"hf", "hf-sharded", "consolidated", "gguf-merged",
                                                 "gguf-legacy"};
  for (const auto& l : spec.layouts) {
    if (!kLayouts.count(l))
      return Error::usage("make-test-model: layouts: unknown layout '" + l +
                          "' (hf, hf-sharded, consolidated, gguf-merged, gguf-legacy)");
    if (!any_float && (l == "hf" || l == "hf-sharded" || l == "consolidated"))
      return Error::usage("make-test-model: layouts: '" + l +
                          "' needs a float type (f32, f16, bf16) among the types");
  }
  return {};
}

}  // namespace

Status make_test_model(const TestModelSpec& spec, ThreadPool& pool) {
  MX_TRY_STATUS(validate(spec));
  MX_TRY_STATUS(make_dir(spec.out_dir));
  const CanonModel m = build_canon(spec.config, spec.seed);
  // Each type and layout once, even when listed twice.
  std::vector<DType> types;
  for (DType t : spec.types)
    if (std::find(types.begin(), types.end(), t) == types.end()) types.push_back(t);
  std::set<std::string> layouts(spec.layouts.begin(), spec.layouts.end());
  for (DType t : types) {
    if (is_float(t)) {
      if (layouts.count("hf")) MX_TRY_STATUS(write_hf(spec, m, t, pool));
      if (layouts.count("hf-sharded")) MX_TRY_STATUS(write_hf_sharded(spec, m, t, pool));
      if (layouts.count("consolidated")) MX_TRY_STATUS(write_consolidated(spec, m, t, pool));
    }
    if (layouts.count("gguf-merged")) MX_TRY_STATUS(write_gguf(spec, m, t, true, pool));
    if (layouts.count("gguf-legacy")) MX_TRY_STATUS(write_gguf(spec, m, t, false, pool));
  }
  return {};
}

}  // namespace mixtral
