// Model loading: recognise the layout, read its config, map every tensor to its canonical name
// through one table, then check names, dtypes and shapes against the config.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/huge_pages.h"
#include "io/gguf.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "model/weights.h"
#include "tensor/quant.h"

namespace mixtral {

const char* layout_name(Layout layout) {
  switch (layout) {
    case Layout::kHuggingFace:
      return "hf";
    case Layout::kConsolidated:
      return "consolidated";
    case Layout::kGgufMerged:
      return "gguf-merged";
    case Layout::kGgufLegacy:
      return "gguf-legacy";
  }
  return "?";
}

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// The one map from file names to canonical names. {L} is a layer, {E} an expert; a canonical
// name ending in ".*" marks a merged 3-D expert tensor that is split into per-expert views.
struct NameRule {
  const char* canonical;
  const char* hf;
  const char* consolidated;
  const char* gguf;
};

constexpr NameRule kNameRules[] = {
    {"token_embd", "model.embed_tokens.weight", "tok_embeddings.weight", "token_embd.weight"},
    {"output_norm", "model.norm.weight", "norm.weight", "output_norm.weight"},
    {"output", "lm_head.weight", "output.weight", "output.weight"},
    {"blk.{L}.attn_norm", "model.layers.{L}.input_layernorm.weight", "layers.{L}.attention_norm.weight",
     "blk.{L}.attn_norm.weight"},
    {"blk.{L}.attn_q", "model.layers.{L}.self_attn.q_proj.weight", "layers.{L}.attention.wq.weight",
     "blk.{L}.attn_q.weight"},
    {"blk.{L}.attn_k", "model.layers.{L}.self_attn.k_proj.weight", "layers.{L}.attention.wk.weight",
     "blk.{L}.attn_k.weight"},
    {"blk.{L}.attn_v", "model.layers.{L}.self_attn.v_proj.weight", "layers.{L}.attention.wv.weight",
     "blk.{L}.attn_v.weight"},
    {"blk.{L}.attn_output", "model.layers.{L}.self_attn.o_proj.weight", "layers.{L}.attention.wo.weight",
     "blk.{L}.attn_output.weight"},
    {"blk.{L}.ffn_norm", "model.layers.{L}.post_attention_layernorm.weight", "layers.{L}.ffn_norm.weight",
     "blk.{L}.ffn_norm.weight"},
    {"blk.{L}.ffn_gate_inp", "model.layers.{L}.block_sparse_moe.gate.weight",
     "layers.{L}.feed_forward.gate.weight", "blk.{L}.ffn_gate_inp.weight"},
    {"blk.{L}.ffn_gate.{E}", "model.layers.{L}.block_sparse_moe.experts.{E}.w1.weight",
     "layers.{L}.feed_forward.experts.{E}.w1.weight", "blk.{L}.ffn_gate.{E}.weight"},
    {"blk.{L}.ffn_up.{E}", "model.layers.{L}.block_sparse_moe.experts.{E}.w3.weight",
     "layers.{L}.feed_forward.experts.{E}.w3.weight", "blk.{L}.ffn_up.{E}.weight"},
    {"blk.{L}.ffn_down.{E}", "model.layers.{L}.block_sparse_moe.experts.{E}.w2.weight",
     "layers.{L}.feed_forward.experts.{E}.w2.weight", "blk.{L}.ffn_down.{E}.weight"},
    // Dense FFN (Mistral 7B and friends): one expert of weight 1.
    {"blk.{L}.ffn_gate.0", "model.layers.{L}.mlp.gate_proj.weight", "layers.{L}.feed_forward.w1.weight",
     "blk.{L}.ffn_gate.weight"},
    {"blk.{L}.ffn_up.0", "model.layers.{L}.mlp.up_proj.weight", "layers.{L}.feed_forward.w3.weight",
     "blk.{L}.ffn_up.weight"},
    {"blk.{L}.ffn_down.0", "model.layers.{L}.mlp.down_proj.weight", "layers.{L}.feed_forward.w2.weight",
     "blk.{L}.ffn_down.weight"},
    // Merged GGUF experts: [n_experts, rows, cols].
    {"blk.{L}.ffn_gate.*", nullptr, nullptr, "blk.{L}.ffn_gate_exps.weight"},
    {"blk.{L}.ffn_up.*", nullptr, nullptr, "blk.{L}.ffn_up_exps.weight"},
    {"blk.{L}.ffn_down.*", nullptr, nullptr, "blk.{L}.ffn_down_exps.weight"},
};

// File tensors that carry nothing we need (derived buffers some exporters save).
constexpr const char* kIgnored[] = {"model.layers.{L}.self_attn.rotary_emb.inv_freq"};

enum class Family { kHf, kConsolidated, kGguf };

const char* rule_pattern(const NameRule& r, Family f) {
  return f == Family::kHf ? r.hf : f == Family::kConsolidated ? r.consolidated : r.gguf;
}

// Matches `name` against a pattern with {L}/{E} placeholders (each a decimal number).
bool match_pattern(std::string_view pat, std::string_view name, int64_t* layer, int64_t* expert) {
  size_t i = 0, j = 0;
  while (i < pat.size()) {
    if (pat.substr(i, 3) == "{L}" || pat.substr(i, 3) == "{E}") {
      int64_t* out = pat[i + 1] == 'L' ? layer : expert;
      size_t k = j;
      while (k < name.size() && k - j < 6 && name[k] >= '0' && name[k] <= '9') ++k;
      if (k == j || (name[j] == '0' && k - j > 1)) return false;
      *out = std::stoll(std::string(name.substr(j, k - j)));
      i += 3;
      j = k;
    } else {
      if (j >= name.size() || pat[i] != name[j]) return false;
      ++i;
      ++j;
    }
  }
  return j == name.size();
}

std::string fill_pattern(std::string_view pat, int64_t layer, int64_t expert) {
  std::string out;
  for (size_t i = 0; i < pat.size(); ++i) {
    if (pat.substr(i, 3) == "{L}") {
      out += std::to_string(layer);
      i += 2;
    } else if (pat.substr(i, 3) == "{E}") {
      out += std::to_string(expert);
      i += 2;
    } else {
      out += pat[i];
    }
  }
  return out;
}

// Joins message parts with append (GCC 12's -Wrestrict misfires on chains of operator+).
template <class... Parts>
std::string cat(const Parts&... parts) {
  std::string out;
  (out.append(parts), ...);
  return out;
}

std::string dims(int64_t rows, int64_t cols) {
  return rows == 1 ? cat("[", std::to_string(cols), "]")
                   : cat("[", std::to_string(rows), ", ", std::to_string(cols), "]");
}

struct Source {
  TensorView view;
  std::string file;  // for messages
  std::string name;  // as stored
};

// Canonical name -> where it lives. Rejects unknown and duplicate tensors.
class SourceMap {
 public:
  explicit SourceMap(Family family) : family_(family) {}

  Status add(const std::string& file, const std::string& name, const TensorView& view) {
    for (const char* ign : kIgnored) {
      int64_t l = -1, e = -1;
      if (family_ == Family::kHf && match_pattern(ign, name, &l, &e)) return {};
    }
    for (const auto& rule : kNameRules) {
      const char* pat = rule_pattern(rule, family_);
      int64_t layer = -1, expert = -1;
      if (!pat || !match_pattern(pat, name, &layer, &expert)) continue;
      std::string canon = rule.canonical;
      if (canon.size() > 2 && canon.substr(canon.size() - 2) == ".*") {
        if (view.ndim != 3)
          return Error::data(file + ": tensor '" + name + "' has shape " + shape_string(view) +
                             ", expected 3 dimensions [experts, rows, cols]");
        const std::string base = fill_pattern(canon.substr(0, canon.size() - 1), layer, 0);
        for (int64_t e = 0; e < view.shape[0]; ++e)
          MX_TRY_STATUS(put(file, name, base + std::to_string(e), view.slice(e)));
        merged_ = true;
        return {};
      }
      if (canon.find("{E}") != std::string::npos) legacy_ = true;
      return put(file, name, fill_pattern(canon, layer, expert), view);
    }
    return Error::data(file + ": unexpected tensor '" + name + "' (not part of a Mixtral model)");
  }

  const Source* find(const std::string& canon) {
    auto it = map_.find(canon);
    if (it == map_.end()) return nullptr;
    used_.insert(canon);
    return &it->second;
  }
  bool has(const std::string& canon) const { return map_.count(canon) != 0; }
  bool merged() const { return merged_; }
  bool legacy() const { return legacy_; }

  // After the model took what it needs: anything left over is an error.
  Status check_all_used() const {
    for (const auto& [canon, src] : map_)
      if (!used_.count(canon))
        return Error::data(src.file + ": unexpected tensor '" + src.name + "' (the config does not use it)");
    return {};
  }

 private:
  Status put(const std::string& file, const std::string& name, const std::string& canon,
             const TensorView& v) {
    auto [it, inserted] = map_.emplace(canon, Source{v, file, name});
    if (!inserted)
      return Error::data(file + ": tensor '" + name + "' duplicates '" + it->second.name + "' in " +
                         it->second.file);
    return {};
  }

  Family family_;
  std::map<std::string, Source> map_;
  std::set<std::string> used_;
  bool merged_ = false, legacy_ = false;
};

// ---------------------------------------------------------------------------------------------
// Config readers.

Status validate_config(const ModelConfig& c, const std::string& file) {
  auto bad = [&](const std::string& what) { return Error::data(file + ": " + what); };
  if (c.dim <= 0) return bad("hidden size (dim) must be positive, got " + std::to_string(c.dim));
  if (c.n_layers <= 0) return bad("layer count must be positive, got " + std::to_string(c.n_layers));
  if (c.n_heads <= 0) return bad("attention head count must be positive, got " + std::to_string(c.n_heads));
  if (c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads != 0)
    return bad("key/value head count " + std::to_string(c.n_kv_heads) + " does not divide the head count " +
               std::to_string(c.n_heads));
  if (c.head_dim <= 0 || c.head_dim % 2 != 0)
    return bad("head dimension must be positive and even, got " + std::to_string(c.head_dim));
  if (c.ffn_dim <= 0) return bad("feed-forward size must be positive, got " + std::to_string(c.ffn_dim));
  if (c.vocab_size <= 0) return bad("vocabulary size must be positive, got " + std::to_string(c.vocab_size));
  if (c.n_experts <= 0) return bad("expert count must be positive, got " + std::to_string(c.n_experts));
  if (c.n_experts_used <= 0 || c.n_experts_used > c.n_experts)
    return bad("experts per token (" + std::to_string(c.n_experts_used) + ") must be in [1, expert count " +
               std::to_string(c.n_experts) + "]");
  if (!(c.norm_eps > 0.0f) || !(c.norm_eps < 1.0f)) return bad("norm epsilon must be in (0, 1)");
  if (!(c.rope_theta > 0.0f) || !std::isfinite(c.rope_theta))
    return bad("rope theta must be positive and finite");
  if (c.sliding_window < 0) return bad("sliding window must not be negative");
  const int64_t kMax = int64_t{1} << 24;  // sizes beyond this are corrupt, not models
  for (int64_t v : {c.dim, c.n_layers, c.n_heads, c.head_dim, c.ffn_dim, c.vocab_size, c.n_experts})
    if (v > kMax) return bad("a size field is implausibly large: " + std::to_string(v));
  return {};
}

// Reads a JSON number field; `required` fields that are absent are an error naming the field.
template <class T>
Status json_field(const json& j, const char* key, const std::string& file, bool required, T* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return Error::data(file + ": missing field '" + key + "'");
    return {};
  }
  if (!it->is_number()) return Error::data(file + ": field '" + std::string(key) + "' must be a number");
  if constexpr (std::is_integral_v<T>) {
    if (!it->is_number_integer())
      return Error::data(file + ": field '" + std::string(key) + "' must be an integer");
    *out = it->get<T>();
  } else {
    *out = it->get<T>();
  }
  return {};
}

Result<json> parse_json_file(const std::string& path) {
  MX_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Error::data(path + ": malformed JSON");
  if (!j.is_object()) return Error::data(path + ": expected a JSON object");
  return j;
}

Result<ModelConfig> read_hf_config(const std::string& path) {
  MX_ASSIGN_OR_RETURN(json j, parse_json_file(path));
  if (auto a = j.find("architectures"); a != j.end() && a->is_array() && !a->empty() && (*a)[0].is_string()) {
    const std::string arch = (*a)[0].get<std::string>();
    if (arch != "MixtralForCausalLM" && arch != "MistralForCausalLM")
      return Error::data(path + ": architecture '" + arch +
                         "' is not supported (MixtralForCausalLM expected)");
  }
  ModelConfig c;
  c.rope_layout = RopeLayout::kHalf;
  c.rope_theta = 1e6f;
  MX_TRY_STATUS(json_field(j, "hidden_size", path, true, &c.dim));
  MX_TRY_STATUS(json_field(j, "intermediate_size", path, true, &c.ffn_dim));
  MX_TRY_STATUS(json_field(j, "num_hidden_layers", path, true, &c.n_layers));
  MX_TRY_STATUS(json_field(j, "num_attention_heads", path, true, &c.n_heads));
  c.n_kv_heads = c.n_heads;
  MX_TRY_STATUS(json_field(j, "num_key_value_heads", path, false, &c.n_kv_heads));
  MX_TRY_STATUS(json_field(j, "vocab_size", path, true, &c.vocab_size));
  MX_TRY_STATUS(json_field(j, "rms_norm_eps", path, false, &c.norm_eps));
  MX_TRY_STATUS(json_field(j, "rope_theta", path, false, &c.rope_theta));
  MX_TRY_STATUS(json_field(j, "max_position_embeddings", path, false, &c.max_seq_len));
  MX_TRY_STATUS(json_field(j, "sliding_window", path, false, &c.sliding_window));
  c.n_experts = 1;
  c.n_experts_used = 1;
  MX_TRY_STATUS(json_field(j, "num_local_experts", path, false, &c.n_experts));
  MX_TRY_STATUS(json_field(j, "num_experts_per_tok", path, false, &c.n_experts_used));
  if (auto t = j.find("tie_word_embeddings"); t != j.end() && !t->is_null()) {
    if (!t->is_boolean()) return Error::data(path + ": field 'tie_word_embeddings' must be true or false");
    c.tie_embeddings = t->get<bool>();
  }
  if (c.n_heads > 0 && c.dim % c.n_heads != 0 && !j.contains("head_dim"))
    return Error::data(path + ": num_attention_heads " + std::to_string(c.n_heads) +
                       " does not divide hidden_size " + std::to_string(c.dim));
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  MX_TRY_STATUS(json_field(j, "head_dim", path, false, &c.head_dim));
  MX_TRY_STATUS(validate_config(c, path));
  return c;
}

Result<ModelConfig> read_params_json(const std::string& path) {
  MX_ASSIGN_OR_RETURN(json j, parse_json_file(path));
  ModelConfig c;
  c.rope_layout = RopeLayout::kInterleaved;
  c.rope_theta = 1e6f;  // mistral-inference's default when params.json has none
  MX_TRY_STATUS(json_field(j, "dim", path, true, &c.dim));
  MX_TRY_STATUS(json_field(j, "n_layers", path, true, &c.n_layers));
  MX_TRY_STATUS(json_field(j, "hidden_dim", path, true, &c.ffn_dim));
  MX_TRY_STATUS(json_field(j, "n_heads", path, true, &c.n_heads));
  c.n_kv_heads = c.n_heads;
  MX_TRY_STATUS(json_field(j, "n_kv_heads", path, false, &c.n_kv_heads));
  MX_TRY_STATUS(json_field(j, "vocab_size", path, true, &c.vocab_size));
  MX_TRY_STATUS(json_field(j, "norm_eps", path, false, &c.norm_eps));
  MX_TRY_STATUS(json_field(j, "rope_theta", path, false, &c.rope_theta));
  MX_TRY_STATUS(json_field(j, "sliding_window", path, false, &c.sliding_window));
  if (c.n_heads > 0 && c.dim % c.n_heads != 0 && !j.contains("head_dim"))
    return Error::data(path + ": n_heads " + std::to_string(c.n_heads) + " does not divide dim " +
                       std::to_string(c.dim));
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  MX_TRY_STATUS(json_field(j, "head_dim", path, false, &c.head_dim));
  c.n_experts = 1;
  c.n_experts_used = 1;
  if (auto m = j.find("moe"); m != j.end() && !m->is_null()) {
    if (!m->is_object()) return Error::data(path + ": field 'moe' must be an object");
    MX_TRY_STATUS(json_field(*m, "num_experts", path, true, &c.n_experts));
    MX_TRY_STATUS(json_field(*m, "num_experts_per_tok", path, true, &c.n_experts_used));
  }
  c.tie_embeddings = false;
  MX_TRY_STATUS(validate_config(c, path));
  return c;
}

Result<ModelConfig> read_gguf_config(const GgufFile& g) {
  const std::string& file = g.path();
  MX_ASSIGN_OR_RETURN(auto arch_opt, g.get_string("general.architecture"));
  if (!arch_opt) return Error::data(file + ": missing key 'general.architecture'");
  const std::string arch = *arch_opt;
  auto need_int = [&](const std::string& key, int64_t* out) -> Status {
    MX_ASSIGN_OR_RETURN(auto v, g.get_int(arch + "." + key));
    if (!v) return Error::data(file + ": missing key '" + arch + "." + key + "'");
    *out = *v;
    return {};
  };
  auto opt_int = [&](const std::string& key, int64_t* out) -> Status {
    MX_ASSIGN_OR_RETURN(auto v, g.get_int(arch + "." + key));
    if (v) *out = *v;
    return {};
  };
  auto opt_float = [&](const std::string& key, float* out) -> Status {
    MX_ASSIGN_OR_RETURN(auto v, g.get_float(arch + "." + key));
    if (v) *out = static_cast<float>(*v);
    return {};
  };
  ModelConfig c;
  c.rope_layout = RopeLayout::kInterleaved;
  c.rope_theta = 10000.0f;  // llama.cpp's default when a file has no freq_base
  MX_TRY_STATUS(need_int("embedding_length", &c.dim));
  MX_TRY_STATUS(need_int("block_count", &c.n_layers));
  MX_TRY_STATUS(need_int("feed_forward_length", &c.ffn_dim));
  MX_TRY_STATUS(need_int("attention.head_count", &c.n_heads));
  c.n_kv_heads = c.n_heads;
  MX_TRY_STATUS(opt_int("attention.head_count_kv", &c.n_kv_heads));
  MX_TRY_STATUS(opt_int("context_length", &c.max_seq_len));
  MX_TRY_STATUS(opt_float("attention.layer_norm_rms_epsilon", &c.norm_eps));
  MX_TRY_STATUS(opt_float("rope.freq_base", &c.rope_theta));
  MX_TRY_STATUS(opt_int("attention.sliding_window", &c.sliding_window));
  c.n_experts = 0;
  c.n_experts_used = 0;
  MX_TRY_STATUS(opt_int("expert_count", &c.n_experts));
  MX_TRY_STATUS(opt_int("expert_used_count", &c.n_experts_used));
  if (c.n_experts == 0) c.n_experts = c.n_experts_used = 1;  // dense
  if (c.n_heads > 0 && c.dim % c.n_heads != 0) {
    int64_t kl = 0;
    MX_TRY_STATUS(opt_int("attention.key_length", &kl));
    if (kl == 0)
      return Error::data(file + ": " + arch + ".attention.head_count " + std::to_string(c.n_heads) +
                         " does not divide " + arch + ".embedding_length " + std::to_string(c.dim));
  }
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  MX_TRY_STATUS(opt_int("attention.key_length", &c.head_dim));
  c.vocab_size = 0;
  MX_TRY_STATUS(opt_int("vocab_size", &c.vocab_size));
  if (c.vocab_size == 0) {
    if (const auto* t = g.find_tensor("token_embd.weight"); t && t->ne.size() == 2) c.vocab_size = t->ne[1];
  }
  c.tie_embeddings = g.find_tensor("output.weight") == nullptr;
  MX_TRY_STATUS(validate_config(c, file));
  return c;
}

// ---------------------------------------------------------------------------------------------
// Building the model from canonical sources.

Status check_dtype(const Source& s) {
  if (!traits(s.view.dtype).supported)
    return Error::data(
        s.file + ": tensor '" + s.name + "' has type " + std::string(dtype_name(s.view.dtype)) +
        ", which this build cannot compute with (supported: f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, "
        "q2_k, q3_k, q4_k, q5_k, q6_k, q8_k, iq1_s, iq1_m, iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq3_s, iq4_nl, "
        "iq4_xs)");
  return {};
}

class Builder {
 public:
  Builder(SourceMap& src, Family family, std::string file)
      : src_(src), family_(family), file_(std::move(file)) {}

  Result<TensorView> matrix(const std::string& canon, int64_t rows, int64_t cols) {
    const Source* s = src_.find(canon);
    if (!s) return Error::data(file_ + ": missing tensor '" + canon + "'" + hint(canon));
    TensorView v = s->view;
    if (v.ndim != 2 || v.shape[0] != rows || v.shape[1] != cols)
      return Error::data(s->file + ": tensor '" + s->name + "' has shape " + shape_string(v) +
                         ", expected [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
    MX_TRY_STATUS(check_dtype(*s));
    return v;
  }

  // A small tensor (norm, router) converted to f32.
  Result<std::vector<float>> small(const std::string& canon, int64_t rows, int64_t cols) {
    const Source* s = src_.find(canon);
    if (!s) return missing(canon);
    const TensorView& v = s->view;
    const bool shape_ok = rows == 1 ? (v.ndim == 1 && v.shape[0] == cols)
                                    : (v.ndim == 2 && v.shape[0] == rows && v.shape[1] == cols);
    if (!shape_ok) return misshapen(*s, dims(rows, cols));
    MX_TRY_STATUS(check_dtype(*s));
    std::vector<float> out(static_cast<size_t>(rows * cols));  // [rows, cols]
    for (int64_t r = 0; r < rows; ++r) dequantize_row(v.dtype, v.row(r), out.data() + r * cols, cols);
    return out;
  }

 private:
  Error missing(const std::string& canon) const {
    return Error::data(cat(file_, ": missing tensor '", canon, "'", hint(canon)));
  }
  static Error misshapen(const Source& s, const std::string& want) {
    return Error::data(
        cat(s.file, ": tensor '", s.name, "' has shape ", shape_string(s.view), ", expected ", want));
  }

  // The file-side spelling of a canonical name, so the message names what the user can look for.
  std::string hint(const std::string& canon) const {
    std::string names;
    for (const auto& rule : kNameRules) {
      const char* pat = rule_pattern(rule, family_);
      int64_t layer = -1, expert = -1;
      if (!pat || !match_pattern(rule.canonical, canon, &layer, &expert)) continue;
      if (!names.empty()) names.append(" or ");
      names.append("'").append(fill_pattern(pat, layer, expert)).append("'");
    }
    if (names.empty()) return names;
    return std::string(" (stored as ").append(names).append(")");
  }
  SourceMap& src_;
  Family family_;
  std::string file_;
};

Status build_weights(SourceMap& src, Family family, Model& m) {
  const ModelConfig& c = m.config;
  Builder b(src, family, m.path);
  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  MX_ASSIGN_OR_RETURN(m.tok_embd, b.matrix("token_embd", c.vocab_size, c.dim));
  m.layers.resize(static_cast<size_t>(c.n_layers));
  for (int64_t l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = m.layers[static_cast<size_t>(l)];
    const std::string p = "blk." + std::to_string(l) + ".";
    MX_ASSIGN_OR_RETURN(L.attn_norm, b.small(p + "attn_norm", 1, c.dim));
    MX_ASSIGN_OR_RETURN(L.wq, b.matrix(p + "attn_q", q_dim, c.dim));
    MX_ASSIGN_OR_RETURN(L.wk, b.matrix(p + "attn_k", kv_dim, c.dim));
    MX_ASSIGN_OR_RETURN(L.wv, b.matrix(p + "attn_v", kv_dim, c.dim));
    MX_ASSIGN_OR_RETURN(L.wo, b.matrix(p + "attn_output", c.dim, q_dim));
    MX_ASSIGN_OR_RETURN(L.ffn_norm, b.small(p + "ffn_norm", 1, c.dim));
    if (c.n_experts > 1 || src.has(p + "ffn_gate_inp")) {
      MX_ASSIGN_OR_RETURN(L.router, b.small(p + "ffn_gate_inp", c.n_experts, c.dim));
    }
    for (int64_t e = 0; e < c.n_experts; ++e) {
      const std::string es = cat(".", std::to_string(e));
      MX_ASSIGN_OR_RETURN(auto w1, b.matrix(p + "ffn_gate" + es, c.ffn_dim, c.dim));
      MX_ASSIGN_OR_RETURN(auto w3, b.matrix(p + "ffn_up" + es, c.ffn_dim, c.dim));
      MX_ASSIGN_OR_RETURN(auto w2, b.matrix(p + "ffn_down" + es, c.dim, c.ffn_dim));
      L.w1.push_back(w1);
      L.w3.push_back(w3);
      L.w2.push_back(w2);
    }
  }
  MX_ASSIGN_OR_RETURN(m.out_norm, b.small("output_norm", 1, c.dim));
  if (c.tie_embeddings) {
    m.output = m.tok_embd;
  } else {
    MX_ASSIGN_OR_RETURN(m.output, b.matrix("output", c.vocab_size, c.dim));
  }
  return src.check_all_used();
}

// ---------------------------------------------------------------------------------------------
// Layout loaders.

bool has_prefix(const uint8_t* p, size_t n, const char* magic) {
  const size_t k = std::strlen(magic);
  return n >= k && std::memcmp(p, magic, k) == 0;
}

Status refuse_pickle(const std::string& path) {
  return Error::data(path +
                     ": pickled PyTorch checkpoints (.pth/.bin) are not supported (they can run code when "
                     "loaded); use the model's .safetensors files or a GGUF file");
}

// Moves the matmul weights into one huge-page buffer (LoadOptions::repack): rewritten where the active
// kernels prefer another layout, copied as stored otherwise, and releases the file pages they were read
// from, so each weight is resident once. Why copy at all: the page cache holds a file in whatever folios
// it was read into, often 4 KiB ones, and streaming a gigabyte per token through 4 KiB mappings costs
// a TLB miss per page (decode ran at 40% of the speed of the same weights in huge pages on a Zen 5 VM).
// When the buffer would not fit in the memory available, the weights stay mapped as stored
// (Model::weights_note says so). Each distinct tensor once (a tied output shares the embedding table,
// which get_rows reads as stored: left as it is).
Status place_weights(const GgufFile& g, size_t limit, Model& m) {
  std::vector<TensorView*> all;
  for (LayerWeights& L : m.layers) {
    for (TensorView* v : {&L.wq, &L.wk, &L.wv, &L.wo}) all.push_back(v);
    for (auto* experts : {&L.w1, &L.w3, &L.w2})
      for (TensorView& v : *experts)
        if (v.data) all.push_back(&v);  // another rank's experts have none
  }
  if (m.output.data != m.tok_embd.data) all.push_back(&m.output);
  constexpr size_t kAlign = 64;
  std::set<const void*> seen;
  std::vector<std::pair<TensorView*, DType>> todo;  // [view, its layout in memory]
  size_t total = 0;                                 // bytes of the buffer, each tensor at a 64-byte boundary
  for (TensorView* v : all) {
    if (!seen.insert(v->data).second) continue;
    todo.emplace_back(v, kernels::preferred_layout(v->dtype, v->rows(), v->cols()));
    total += (v->nbytes() + kAlign - 1) / kAlign * kAlign;
  }
  if (todo.empty()) return {};
  if (limit == 0) {
    const std::optional<size_t> avail = available_memory();
    limit = avail ? *avail / 10 * 9 : SIZE_MAX;
  }
  if (total > limit) {
    m.weights_note = "weights left in the file mapping: moving them to huge pages needs " +
                     std::to_string(total >> 20) + " MiB, over the " + std::to_string(limit >> 20) +
                     " MiB available";
    std::fprintf(stderr, "mixtral: %s: %s\n", g.path().c_str(), m.weights_note.c_str());
    return {};
  }
  const std::shared_ptr<uint8_t> buf = alloc_huge_pages(total);
  if (!buf)
    return Error::io(g.path() + ": cannot allocate " + std::to_string(total >> 20) +
                     " MiB for the weights (try --no-repack)");
  size_t at = 0;
  for (auto [v, to] : todo) {
    uint8_t* dst = buf.get() + at;
    const size_t n = v->nbytes();
    if (to != v->dtype) {
      repack(v->dtype, to, v->data, dst, v->rows(), v->cols());
      ++m.repacked_tensors;
    } else {
      std::memcpy(dst, v->data, n);
    }
    g.release(v->data, n);
    v->data = dst;
    v->dtype = to;
    at += (n + kAlign - 1) / kAlign * kAlign;
  }
  m.huge_page_bytes = static_cast<int64_t>(total);
  m.keep_alive.push_back(buf);
  return {};
}

// Keeps rows [begin, end) of a [rows, cols] view in its file layout; the rows outside lose MADV_HUGEPAGE
// (advise_unread), since this process never reads them. No rows: the view keeps its shape, without data.
void keep_rows(TensorView& v, int64_t begin, int64_t end) {
  advise_unread(v.row(0), static_cast<size_t>(begin) * v.row_stride());
  advise_unread(v.row(end), static_cast<size_t>(v.rows() - end) * v.row_stride());
  if (begin == end) {
    v.data = nullptr;
    return;
  }
  v.data = v.row(begin);
  v.shape[0] = end - begin;
}

// Places the experts' parts on the ranks (expert_part) and keeps only this rank's rows of each expert: the
// views of experts held elsewhere lose their data, so nothing in this process reads them and their pages are
// never mapped in.
Status assign_experts(const LoadOptions& opts, Model& m) {
  const ModelConfig& c = m.config;
  if (opts.n_ranks < 1 || opts.rank < 0 || opts.rank >= opts.n_ranks)
    return Error::usage("rank " + std::to_string(opts.rank) + " of " + std::to_string(opts.n_ranks));
  const int64_t parts = expert_parts(c, opts.n_ranks);
  if (parts == 0)
    return Error::usage(m.path + ": " + std::to_string(opts.n_ranks) + " ranks would cut each of the " +
                        std::to_string(c.n_experts) + " experts into parts under " +
                        std::to_string(kExpertPartRows) + " rows (at most " +
                        std::to_string(c.n_experts * (std::min(c.ffn_dim, c.dim) / kExpertPartRows)) +
                        " ranks)");
  m.rank = opts.rank;
  m.n_ranks = opts.n_ranks;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = m.layers[static_cast<size_t>(l)];
    L.parts_per_expert = parts;
    L.expert_parts.resize(static_cast<size_t>(c.n_experts * parts));
    for (int64_t e = 0; e < c.n_experts; ++e) {
      const ExpertPart* mine = nullptr;
      for (int64_t p = 0; p < parts; ++p) {
        ExpertPart& x = L.expert_parts[static_cast<size_t>(e * parts + p)];
        x = expert_part(c, opts.n_ranks, l, e, p);
        if (x.rank == opts.rank) mine = &x;
      }
      if (opts.n_ranks == 1) continue;
      const auto i = static_cast<size_t>(e);
      keep_rows(L.w1[i], mine ? mine->ffn_begin : 0, mine ? mine->ffn_end : 0);
      keep_rows(L.w3[i], mine ? mine->ffn_begin : 0, mine ? mine->ffn_end : 0);
      keep_rows(L.w2[i], mine ? mine->dim_begin : 0, mine ? mine->dim_end : 0);
    }
  }
  return {};
}

Result<std::unique_ptr<Model>> load_gguf(const std::string& path, const LoadOptions& opts) {
  MX_ASSIGN_OR_RETURN(GgufFile g, GgufFile::open(path));
  auto gguf = std::make_shared<GgufFile>(std::move(g));
  auto m = std::make_unique<Model>();
  m->path = path;
  MX_ASSIGN_OR_RETURN(m->config, read_gguf_config(*gguf));
  SourceMap src(Family::kGguf);
  for (const auto& t : gguf->tensors()) {
    MX_TRY_STATUS(src.add(path, t.name, t.view()));
    m->tensors.push_back({t.name, t.dtype, shape_string(t.view()), t.nbytes});
  }
  if (src.merged() && src.legacy())
    return Error::data(path + ": holds both merged (*_exps) and per-expert expert tensors");
  m->layout = src.legacy() ? Layout::kGgufLegacy : Layout::kGgufMerged;
  MX_TRY_STATUS(build_weights(src, Family::kGguf, *m));
  MX_TRY_STATUS(assign_experts(opts, *m));
  if (opts.repack) MX_TRY_STATUS(place_weights(*gguf, opts.place_limit, *m));
  MX_ASSIGN_OR_RETURN(auto tokens, gguf->get_string_array("tokenizer.ggml.tokens"));
  if (tokens) m->vocab = std::move(*tokens);
  m->keep_alive.push_back(gguf);
  return m;
}

// Opens safetensors files and registers their tensors.
Status add_safetensors(const std::vector<std::string>& files, SourceMap& src, Model& m) {
  for (const auto& f : files) {
    MX_ASSIGN_OR_RETURN(SafetensorsFile st, SafetensorsFile::open(f));
    auto shared = std::make_shared<SafetensorsFile>(std::move(st));
    for (const auto& t : shared->tensors()) {
      MX_TRY_STATUS(src.add(f, t.name, t.view()));
      m.tensors.push_back({t.name, t.dtype, shape_string(t.view()), t.nbytes});
    }
    m.keep_alive.push_back(shared);
  }
  return {};
}

// The safetensors files of a directory: an index's shards, or one named file.
Result<std::vector<std::string>> safetensors_files(const fs::path& dir, const char* single,
                                                   const char* prefix) {
  const fs::path index = dir / (std::string(single) + ".index.json");
  if (fs::exists(index)) {
    MX_ASSIGN_OR_RETURN(json j, parse_json_file(index.string()));
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object())
      return Error::data(index.string() + ": missing object 'weight_map'");
    std::set<std::string> shards;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it->is_string())
        return Error::data(index.string() + ": weight_map['" + it.key() + "'] must be a string");
      const std::string shard = it->get<std::string>();
      if (shard.find('/') != std::string::npos || shard.find("..") != std::string::npos)
        return Error::data(index.string() + ": weight_map['" + it.key() +
                           "'] names a file outside the directory");
      shards.insert(shard);
    }
    std::vector<std::string> out;
    for (const auto& s : shards) out.push_back((dir / s).string());
    return out;
  }
  if (fs::exists(dir / single)) return std::vector<std::string>{(dir / single).string()};
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && e.path().extension() == ".safetensors")
      out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  if (!out.empty()) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto ext = e.path().extension();
    if (ext == ".pth" || ext == ".bin" || ext == ".pt")
      return Error(refuse_pickle(e.path().string()).error());
  }
  return Error::data(dir.string() + ": no " + single + " (or shards) found");
}

Result<std::unique_ptr<Model>> load_dir(const fs::path& dir, Family family, const LoadOptions& opts) {
  auto m = std::make_unique<Model>();
  m->path = dir.string();
  std::vector<std::string> files;
  if (family == Family::kHf) {
    m->layout = Layout::kHuggingFace;
    MX_ASSIGN_OR_RETURN(m->config, read_hf_config((dir / "config.json").string()));
    MX_ASSIGN_OR_RETURN(files, safetensors_files(dir, "model.safetensors", "model"));
  } else {
    m->layout = Layout::kConsolidated;
    MX_ASSIGN_OR_RETURN(m->config, read_params_json((dir / "params.json").string()));
    MX_ASSIGN_OR_RETURN(files, safetensors_files(dir, "consolidated.safetensors", "consolidated"));
  }
  SourceMap src(family);
  MX_TRY_STATUS(add_safetensors(files, src, *m));
  MX_TRY_STATUS(build_weights(src, family, *m));
  MX_TRY_STATUS(assign_experts(opts, *m));
  return m;
}

}  // namespace

Result<std::unique_ptr<Model>> load_model(const std::string& path, const LoadOptions& opts) {
  std::error_code ec;
  const fs::path p(path);
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / "config.json")) return load_dir(p, Family::kHf, opts);
    if (fs::exists(p / "params.json")) return load_dir(p, Family::kConsolidated, opts);
    return Error::data(path + ": a directory without config.json (Hugging Face) or params.json (Mistral)");
  }
  if (!fs::exists(p, ec)) return Error::io(path + ": no such file or directory");
  MX_ASSIGN_OR_RETURN(MappedFile f, MappedFile::open(path));
  const uint8_t* d = f.data();
  const size_t n = f.size();
  if (has_prefix(d, n, "GGUF")) return load_gguf(path, opts);
  if (has_prefix(d, n, "PK\x03\x04") || (n >= 1 && d[0] == 0x80)) return Error(refuse_pickle(path).error());
  if (p.extension() == ".safetensors") {
    const fs::path dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
    if (fs::exists(dir / "config.json")) return load_dir(dir, Family::kHf, opts);
    if (fs::exists(dir / "params.json")) return load_dir(dir, Family::kConsolidated, opts);
    return Error::data(path + ": a safetensors file needs config.json or params.json beside it");
  }
  return Error::data(path + ": not a model file (expected a GGUF file or a model directory)");
}

}  // namespace mixtral
