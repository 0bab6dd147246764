// Internals of mixtral::Tokenizer shared by tokenizer.cpp and chat.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "mixtral/tokenizer.h"
#include "tokenizer/bpe.h"
#include "tokenizer/model_spec.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace mixtral {

struct Tokenizer::Impl {
  tok::ModelSpec spec;
  tok::BpeEncoder bpe;
  bool builtin = true;                                        // encode with `bpe`, else with `sp`
  std::shared_ptr<sentencepiece::SentencePieceProcessor> sp;  // the library, when it is the encoder
  // Pieces --special recognises in text (control and unknown), grouped by first byte, longest first.
  std::vector<std::vector<int32_t>> special_by_byte;  // [256] -> ids

  // Encodes one fragment of plain text (no special tokens), appending ids.
  Status encode_plain(std::string_view text, std::vector<int32_t>& out) const;
  // The longest special piece at the start of `text`: its id, or -1.
  int32_t match_special(std::string_view text, size_t* len) const;
};

}  // namespace mixtral
