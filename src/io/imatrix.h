// Importance matrices as llama.cpp's llama-imatrix writes them: per matmul weight (by its GGUF name, e.g.
// blk.0.attn_q.weight, blk.0.ffn_down_exps.weight), per input column, the sum of the squared activations the
// weight saw, and the number of tokens, one row and count per expert for the 3-D expert tensors.
//
// Two file formats, told apart by content (a GGUF starts with "GGUF"):
// - GGUF (llama.cpp's current format): general.type = "imatrix"; imatrix.datasets (array of strings),
//   imatrix.chunk_count and imatrix.chunk_size (u32); per weight NAME two F32 tensors, NAME.in_sum2 with
//   ne = [cols, n_mat] (the sums of squares, one row per matrix) and NAME.counts with ne = [1, n_mat] (tokens
//   per matrix). Tensors named otherwise are ignored, as llama.cpp does.
// - the legacy .dat (little-endian): i32 n_entries; per entry i32 name length, the name's bytes, i32 ncall,
//   i32 nval, f32 values[nval] = (sum / count) * ncall per matrix (1 where a matrix has no tokens); then,
//   optionally, i32 chunk count, i32 length and the dataset name's bytes. The number of matrices is not
//   stored: it is nval / the weight's column count.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/result.h"

namespace mixtral {

struct ImatrixEntry {
  // GGUF: [n_mat, cols] sums of squares; legacy .dat: [nval] the stored values ((sum / count) * ncall).
  std::vector<float> sums;
  // GGUF: [n_mat] tokens per matrix; legacy .dat: [1] ncall.
  std::vector<int64_t> counts;
};

struct Imatrix {
  std::map<std::string, ImatrixEntry> entries;  // by weight name, sorted (the order both formats write)
  std::vector<std::string> datasets;            // the text files it was computed on
  int64_t chunk_count = 0;                      // chunks of text evaluated
  int64_t chunk_size = 0;                       // tokens per chunk (legacy .dat: 0, not stored)
  bool legacy = false;                          // read from a .dat
};

// Reads either format. Every error is one line naming the file and the entry, tensor or key.
Result<Imatrix> read_imatrix(const std::string& path);
// The same from bytes in memory (the fuzzer); `name` stands for the file in messages.
Result<Imatrix> parse_imatrix(const uint8_t* data, size_t size, const std::string& name);

// Writes the GGUF format (entries with a non-legacy layout: sums.size() a multiple of counts.size() >= 1).
Status write_imatrix_gguf(const Imatrix& im, const std::string& path);
// Writes the legacy .dat: each entry's values as llama.cpp stores them (sum / count * ncall per matrix,
// ncall = ceil(max count / chunk_size)); a legacy entry's values as they are. chunk_size must be > 0 unless
// every entry is legacy.
Status write_imatrix_dat(const Imatrix& im, const std::string& path);

// The importance of each value of an entry, as llama-quantize takes it: [sums.size()] the mean squared
// activation per column of each matrix (sum / count; 1 for a matrix without tokens); legacy: value / ncall
// (the values as they are when ncall is 0).
std::vector<float> imatrix_weights(const Imatrix& im, const ImatrixEntry& e);

}  // namespace mixtral
