// What every tokenizer source (SentencePiece ModelProto, GGUF metadata, tokenizer.json) is converted to
// before the encoder is built, and the readers that produce it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.h"
#include "mixtral/tokenizer.h"

namespace mixtral::tok {

enum class ModelType : int32_t { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };

struct ModelSpec {
  std::vector<std::string> pieces;  // [n_vocab]
  std::vector<float> scores;        // [n_vocab]
  std::vector<TokenType> types;     // [n_vocab]
  ModelType model_type = ModelType::kBpe;
  int32_t unk_id = -1, bos_id = -1, eos_id = -1, pad_id = -1;  // -1: none
  bool byte_fallback = false;
  // NormalizerSpec (SentencePiece's proto2 defaults).
  std::string normalizer_name = "identity";
  std::string precompiled_charsmap;  // non-empty: rules only the SentencePiece library applies
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = false;
  bool escape_whitespaces = true;
  bool treat_whitespace_as_suffix = false;
  bool has_denormalizer = false;
  std::string unk_surface = " \xE2\x81\x87 ";  // " ⁇ "
  // From the file around the model (GGUF keys, tokenizer_config.json).
  bool add_bos = true;
  bool add_eos = false;
  std::string chat_template;
  std::string source;  // file name used in messages
  std::string proto;   // the serialized ModelProto when the source was one
};

// Parses a serialized SentencePiece ModelProto; errors name `name` and the field.
Result<ModelSpec> parse_model_proto(std::string_view bytes, const std::string& name);
// Serializes the spec as a ModelProto the SentencePiece library loads.
std::string serialize_model_proto(const ModelSpec& spec);

// Checks lengths, ids and piece spellings, fills byte_fallback; errors name the source and the field.
Status validate_spec(ModelSpec& spec, const char* pieces_field, const char* scores_field,
                     const char* types_field);

// Readers of the other sources.
Result<ModelSpec> read_gguf_spec(const std::string& path);
Result<ModelSpec> read_tokenizer_json(const std::string& path);
// Reads chat_template / add_bos_token / add_eos_token from a tokenizer_config.json when the file exists.
Status read_tokenizer_config(const std::string& path, ModelSpec& spec);

// "<0x41>" -> 0x41; -1 when the piece is not a byte piece's spelling.
int piece_to_byte(std::string_view piece);

// Text from a file or a library quoted in a one-line message: control characters escaped as \xNN, long
// text shortened.
std::string one_line(std::string_view s, size_t max_len = 200);

}  // namespace mixtral::tok
