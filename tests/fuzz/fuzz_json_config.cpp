// libFuzzer target: nlohmann::json on arbitrary bytes as a model config (config.json / params.json),
// reading the fields a loader reads. Exceptions are the library's error channel and are caught;
// anything else (a crash, a sanitizer report, an uncaught exception) is a finding.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "fuzz_check.h"

namespace {

using nlohmann::json;

// Reads `key` of an object as T when present with a compatible type.
template <class T>
void read_field(const json& obj, const char* key, size_t& sink) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return;
  try {
    const T v = it->get<T>();
    if constexpr (std::is_same_v<T, std::string>) {
      sink += v.size();
    } else {
      sink += static_cast<size_t>(v != v ? 1 : 0);
    }
  } catch (const json::exception&) {
  }
}

void read_config(const json& j, size_t& sink) {
  if (!j.is_object()) return;
  for (const char* k :
       {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "num_local_experts", "num_experts_per_tok", "vocab_size", "max_position_embeddings", "sliding_window",
        "head_dim", "bos_token_id", "eos_token_id", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim"})
    read_field<int64_t>(j, k, sink);
  for (const char* k : {"rope_theta", "rms_norm_eps", "norm_eps"}) read_field<double>(j, k, sink);
  for (const char* k : {"model_type", "torch_dtype", "hidden_act"}) read_field<std::string>(j, k, sink);
  read_field<bool>(j, "tie_word_embeddings", sink);
  if (const auto a = j.find("architectures"); a != j.end() && a->is_array())
    for (const auto& e : *a) sink += e.is_string() ? e.get_ref<const std::string&>().size() : 0;
  if (const auto moe = j.find("moe"); moe != j.end() && moe->is_object()) {
    read_field<int64_t>(*moe, "num_experts", sink);
    read_field<int64_t>(*moe, "num_experts_per_tok", sink);
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
