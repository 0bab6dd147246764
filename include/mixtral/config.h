// Public: hyper-parameters of a Mixtral-family model, from whichever file layout it came from.
#pragma once

#include <cstdint>
#include <string>

namespace mixtral {

// How q/k rows are ordered within a head, which decides how RoPE pairs dimensions.
//  kInterleaved: pairs (2i, 2i+1)          -- GGUF and Mistral's consolidated files
//  kHalf:        pairs (i, i + head_dim/2) -- Hugging Face ("rotate_half")
enum class RopeLayout { kInterleaved, kHalf };

struct ModelConfig {
  int64_t dim = 0;  // hidden size
  int64_t n_layers = 0;
  int64_t n_heads = 0;     // query heads
  int64_t n_kv_heads = 0;  // key/value heads (GQA)
  int64_t head_dim = 0;    // usually dim / n_heads; may differ when a config says so
  int64_t ffn_dim = 0;     // expert hidden size
  int64_t vocab_size = 0;
  int64_t n_experts = 0;       // 1 for a dense model (dense FFN = one expert of weight 1)
  int64_t n_experts_used = 0;  // top-k
  float norm_eps = 1e-5f;
  float rope_theta = 1e6f;
  int64_t sliding_window = 0;  // 0: full causal attention
  int64_t max_seq_len = 0;     // trained context (informational; 0 if unknown)
  RopeLayout rope_layout = RopeLayout::kInterleaved;
  bool tie_embeddings = false;
};

}  // namespace mixtral
