// A loaded model: its config and views of every weight, by canonical name, into the mapped files.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "core/result.h"
#include "model/config.h"
#include "tensor/tensor.h"

namespace mixtral {

enum class Layout { kHuggingFace, kConsolidated, kGgufMerged, kGgufLegacy };
const char* layout_name(Layout layout);

// Expert parallelism: how n_ranks processes share the experts. With n_ranks <= n_experts each expert lives
// whole on one rank, round robin over (layer, expert), so that when the ranks do not divide the experts the
// remainder moves from layer to layer. With more ranks each expert is cut into ceil(n_ranks / n_experts)
// parts by rows (W1 and W3 by ffn rows, W2 by dim rows, at multiples of kExpertPartRows), the parts dealt
// round robin over (layer, expert, part).
struct ExpertPart {
  int32_t rank = 0;
  int64_t ffn_begin = 0, ffn_end = 0;  // its rows of W1 and W3
  int64_t dim_begin = 0, dim_end = 0;  // its rows of W2
};
inline constexpr int64_t kExpertPartRows = 16;  // every repacked layout's row group divides it
// Parts per expert for n_ranks ranks; 0 when an expert cannot be cut that fine (parts under
// kExpertPartRows rows).
inline int64_t expert_parts(const ModelConfig& c, int n_ranks) {
  const int64_t parts = (n_ranks + c.n_experts - 1) / c.n_experts;
  return parts * kExpertPartRows > std::min(c.ffn_dim, c.dim) ? 0 : parts;
}
inline ExpertPart expert_part(const ModelConfig& c, int n_ranks, int64_t layer, int64_t expert,
                              int64_t part) {
  const int64_t parts = expert_parts(c, n_ranks);
  const auto cut = [&](int64_t rows, int64_t p) {  // part p's first row
    return p == parts ? rows : (rows * p / parts) / kExpertPartRows * kExpertPartRows;
  };
  ExpertPart x;
  x.rank = static_cast<int32_t>(((layer * c.n_experts + expert) * parts + part) % n_ranks);
  x.ffn_begin = cut(c.ffn_dim, part);
  x.ffn_end = cut(c.ffn_dim, part + 1);
  x.dim_begin = cut(c.dim, part);
  x.dim_end = cut(c.dim, part + 1);
  return x;
}

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
  // Expert parallelism (placement below): every part of every expert, part p of expert e at
  // e * parts_per_expert + p. w1, w3 and w2 above hold this rank's part of each expert (its rows), or no data
  // when another rank holds all of it: this process never maps a page of those in.
  std::vector<ExpertPart> expert_parts;
  int64_t parts_per_expert = 1;
};

// Bytes of rows [ffn_begin, ffn_end) of W1 and W3 and [dim_begin, dim_end) of W2 of expert e (the whole
// expert: ExpertPart{0, 0, ffn_dim, 0, dim}), whatever part of it this process holds.
inline size_t expert_bytes(const LayerWeights& L, int64_t e, const ModelConfig& c, const ExpertPart& rows) {
  const auto i = static_cast<size_t>(e);
  const auto f = static_cast<size_t>(rows.ffn_end - rows.ffn_begin);
  const auto d = static_cast<size_t>(rows.dim_end - rows.dim_begin);
  return f * (row_bytes(L.w1[i].dtype, c.dim) + row_bytes(L.w3[i].dtype, c.dim)) +
         d * row_bytes(L.w2[i].dtype, c.ffn_dim);
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
  int rank = 0, n_ranks = 1;          // LoadOptions's: this process holds the expert parts placed on rank
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
  // Expert parallelism (mpirun): this process is `rank` of n_ranks and keeps only the expert parts
  // expert_part places on it; every other weight is kept by every rank.
  int rank = 0, n_ranks = 1;
};

// Loads any supported layout, recognised by content: a GGUF file, a Hugging Face directory
// (config.json + safetensors) or a Mistral consolidated directory (params.json + safetensors).
Result<std::unique_ptr<Model>> load_model(const std::string& path, const LoadOptions& opts = {});

}  // namespace mixtral
