// The built-in encoder: SentencePiece's BPE (bpe_model.cc) and identity normalizer re-implemented so that
// the ids are the same as the library's for every input, and fast enough to stream megabytes:
//   normalize: dummy-prefix "▁", " " -> "▁", each invalid UTF-8 byte -> U+FFFD
//   symbols:   user-defined pieces (longest match) or single characters
//   merge:     repeatedly the adjacent pair whose concatenation is a normal/user-defined/unused piece of
//              highest score, leftmost first among equal scores
//   output:    piece ids (control/unknown/byte spellings win over normal ones, as PieceToId), unused
//              pieces split back, unknown symbols as their UTF-8 bytes (byte fallback) or one <unk> per run
// Text is cut before each "▁" that follows another character when no piece can span such a cut (true of
// every Mistral vocabulary); each part is merged on its own, which gives the same result.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/model_spec.h"

namespace mixtral::tok {

// Open-addressing hash map from piece spelling to a small record; keys point into the owner's strings.
class PieceMap {
 public:
  struct Entry {
    std::string_view key;
    int32_t id = -1;      // piece id in the vocabulary
    int32_t out_id = -1;  // id PieceToId returns for this spelling (reserved pieces win)
    float score = 0.0f;
  };
  void build(const std::vector<Entry>& entries);
  const Entry* find(std::string_view key) const {
    if (slots_.empty()) return nullptr;
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      const Entry& e = slots_[i];
      if (e.id < 0) return nullptr;
      if (e.key == key) return &e;
    }
  }
  static uint64_t hash(std::string_view s) {
    uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
    for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
    return h ^ (h >> 29);
  }

 private:
  std::vector<Entry> slots_;
  size_t mask_ = 0;
};

class BpeEncoder {
 public:
  // Whether the built-in encoder reproduces SentencePiece for this model (else use the library).
  static bool supports(const ModelSpec& spec, std::string* why);
  void init(const ModelSpec& spec);
  // Appends the ids of `text` (no BOS/EOS).
  void encode(std::string_view text, std::vector<int32_t>& out) const;
  // SentencePiece's normalization of `text` (exposed for tests).
  void normalize(std::string_view text, std::string& out) const;

 private:
  struct Symbol {
    int32_t prev, next;
    uint32_t begin, len;
    int32_t out_id;  // id of a merged symbol; -1 until looked up
    bool freeze;     // a user-defined piece: never merged
  };
  struct Candidate {
    float score;
    int32_t left, right;
    uint32_t size;
    const PieceMap::Entry* entry;
  };
  void encode_chunk(std::string_view chunk, std::vector<int32_t>& out, bool& prev_unk) const;
  void emit(std::string_view piece, int32_t out_id, std::vector<int32_t>& out, bool& prev_unk,
            const std::vector<std::pair<std::string_view, std::pair<std::string_view, std::string_view>>>&
                rev) const;
  size_t user_defined_match(std::string_view s) const;

  const ModelSpec* spec_ = nullptr;
  PieceMap mergeable_;                     // NORMAL, USER_DEFINED, UNUSED pieces: what merges may produce
  PieceMap reserved_;                      // CONTROL, UNKNOWN, BYTE pieces: found only by PieceToId
  std::vector<int32_t> byte_ids_;          // [256] id of <0xXX>
  std::vector<std::string> user_defined_;  // sorted by length, longest first
  bool has_unused_ = false;
  bool split_on_space_ = false;  // no mergeable piece contains "x▁" with x not "▁"
};

}  // namespace mixtral::tok
