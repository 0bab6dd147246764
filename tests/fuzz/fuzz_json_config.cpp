// libFuzzer target: nlohmann::json on arbitrary bytes as a model config (config.json / params.json),
// reading the fields a loader reads. Exceptions are the library's error channel and are caught;
// anything else (a crash, a sanitizer report, an uncaught exception) is a finding. Field reads check the
// JSON type first, so nothing here throws after the parse.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "fuzz_check.h"

namespace {

using nlohmann::json;

// Integer fields as a loader must read them: only JSON integers. (get<int64_t>() on a float such as
// 1e40 is an out-of-range float-to-integer conversion, undefined behaviour; the first fuzz run found it.)
void read_int(const json& obj, const char* key, size_t& sink) {
  const auto it = obj.find(key);
  if (it != obj.end() && it->is_number_integer()) sink += static_cast<size_t>(it->get<int64_t>());
}

// Float fields: read as double, narrowed to float only when in range (standard C++ leaves an out-of-range
// double -> float conversion undefined too).
void read_float(const json& obj, const char* key, size_t& sink) {
  const auto it = obj.find(key);
  if (it == obj.end() || !it->is_number()) return;
  const double d = it->get<double>();
  if (std::isfinite(d) && std::fabs(d) <= std::numeric_limits<float>::max())
    sink += static_cast<float>(d) > 0.0f;
}

void read_string(const json& obj, const char* key, size_t& sink) {
  const auto it = obj.find(key);
  if (it != obj.end() && it->is_string()) sink += it->get_ref<const std::string&>().size();
}

void read_config(const json& j, size_t& sink) {
  if (!j.is_object()) return;
  for (const char* k :
       {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "num_local_experts", "num_experts_per_tok", "vocab_size", "max_position_embeddings", "sliding_window",
        "head_dim", "bos_token_id", "eos_token_id", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim"})
    read_int(j, k, sink);
  for (const char* k : {"rope_theta", "rms_norm_eps", "norm_eps"}) read_float(j, k, sink);
  for (const char* k : {"model_type", "torch_dtype", "hidden_act"}) read_string(j, k, sink);
  if (const auto t = j.find("tie_word_embeddings"); t != j.end() && t->is_boolean()) sink += t->get<bool>();
  if (const auto a = j.find("architectures"); a != j.end() && a->is_array())
    for (const auto& e : *a) sink += e.is_string() ? e.get_ref<const std::string&>().size() : 0;
  if (const auto moe = j.find("moe"); moe != j.end() && moe->is_object()) {
    read_int(*moe, "num_experts", sink);
    read_int(*moe, "num_experts_per_tok", sink);
  }
  if (const auto wm = j.find("weight_map"); wm != j.end() && wm->is_object())
    for (const auto& [tensor, file] : wm->items()) sink += tensor.size() + (file.is_string() ? 1 : 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto* text = reinterpret_cast<const char*>(data);
  size_t sink = 0;
  bool threw = false;
  try {
    const json j = json::parse(text, text + size);
    read_config(j, sink);
  } catch (const json::exception&) {
    threw = true;
  }
  // The non-throwing entry point must agree on what is valid.
  const json quiet = json::parse(text, text + size, nullptr, /*allow_exceptions=*/false);
  mixtral::fuzz::require(quiet.is_discarded() == threw, "parse with and without exceptions disagree");
  volatile size_t keep = sink;
  (void)keep;
  return 0;
}
