// A loaded model: its config and views of every weight, by canonical name, into the mapped files.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/result.h"
#include "model/config.h"
#include "tensor/tensor.h"

namespace mixtral {

enum class Layout { kHuggingFace, kConsolidated, kGgufMerged, kGgufLegacy };
const char* layout_name(Layout layout);

struct LayerWeights {
  std::vector<float> attn_norm;  // [dim] (norms and router are small: kept as f32 copies)
  TensorView wq;                 // [n_heads * head_dim, dim]
  TensorView wk;                 // [n_kv_heads * head_dim, dim]
  TensorView wv;                 // [n_kv_heads * head_dim, dim]
  TensorView wo;                 // [dim, n_heads * head_dim]
  std::vector<float> ffn_norm;   // [dim]
  std::vector<float> router;     // [n_experts, dim] f32; empty for a dense model (one expert, weight 1)
  std::vector<TensorView> w1;    // per expert [ffn_dim, dim]  (gate)
  std::vector<TensorView> w3;    // per expert [ffn_dim, dim]  (up)
  std::vector<TensorView> w2;    // per expert [dim, ffn_dim]  (down)
  // [n_experts] the rank that computes each expert (expert_rank below). Under mpirun the views of the
  // other ranks' experts have no data: this process never maps a page of them in.
  std::vector<int32_t> expert_rank;
};

// Expert parallelism: which of n_ranks processes holds expert e of layer l. Round robin over (layer,
// expert), so that with ranks that do not divide the experts the remainder moves from layer to layer.
inline int32_t expert_rank(int64_t layer, int64_t expert, int64_t n_experts, int n_ranks) {
  return static_cast<int32_t>((layer * n_experts + expert) % n_ranks);
}

struct TensorRecord {  // what `info` reports
  std::string name;    // as stored in the file
  DType dtype;
  std::string shape;
  size_t nbytes;
};

struct Model {
  ModelConfig config;
  Layout layout = Layout::kGgufMerged;
  std::string path;
  TensorView tok_embd;  // [vocab, dim]
  std::vector<LayerWeights> layers;
  std::vector<float> out_norm;        // [dim]
  TensorView output;                  // [vocab, dim] (tok_embd when tied)
  std::vector<std::string> vocab;     // token pieces when the file carries them (GGUF), else empty
  std::vector<TensorRecord> tensors;  // as stored in the files (views may be repacked, see LoadOptions)
  int64_t repacked_tensors = 0;       // matmul weight views rewritten at load (LoadOptions::repack)
  int64_t huge_page_bytes = 0;        // matmul weights moved to huge pages at load (LoadOptions::repack)
  std::string weights_note;           // why the weights stayed where they are, when LoadOptions asked
  int rank = 0, n_ranks = 1;          // LoadOptions's: this process holds the experts placed on rank
  std::vector<std::shared_ptr<const void>> keep_alive;  // the mapped files behind the views
};

struct LoadOptions {
  // Move the matmul weights into one huge-page buffer, in the layout the active kernels read fastest
  // (kernels::preferred_layout: Q4_0 and Q8_0 row-interleaved on AVX-512, grouped on AVX2, others as stored),
  // releasing the mapped file pages they came from, so memory stays about the file size (the file never
  // changes); they stay mapped when the buffer would not fit in the available memory (Model::weights_note).
  // The values are the same; results agree within the f32 summation order (tests/model/repack_test.cpp). Off
  // for tools that read or re-encode the weights as stored (convert, quantize, info).
  bool repack = false;
  // The most bytes the huge-page buffer may take (0: 90% of MemAvailable at load time).
  size_t place_limit = 0;
  // Expert parallelism (mpirun): this process is `rank` of n_ranks and keeps only the experts expert_rank
  // places on it (n_ranks <= n_experts); every other weight is kept by every rank.
  int rank = 0, n_ranks = 1;
};

// Loads any supported layout, recognised by content: a GGUF file, a Hugging Face directory
// (config.json + safetensors) or a Mistral consolidated directory (params.json + safetensors).
Result<std::unique_ptr<Model>> load_model(const std::string& path, const LoadOptions& opts = {});

}  // namespace mixtral
