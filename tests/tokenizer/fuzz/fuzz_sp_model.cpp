// libFuzzer target: a SentencePiece ModelProto parsed by our reader; a model that loads must encode (the
// library, used for non-BPE models, may refuse with a clean error), decode and stream-decode, and its decode
// must equal the streamed text.
#include <cstddef>
#include <cstdint>
#include <string>

#include "../../fuzz/fuzz_check.h"
#include "mixtral/tokenizer.h"

namespace mixtral {

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string name = "fuzz.model";
  auto tok = Tokenizer::from_sentencepiece(std::string_view(reinterpret_cast<const char*>(data), size), name);
  if (!tok.ok()) {
    fuzz::check_error(tok.error(), name);
    return 0;
  }
  const Tokenizer& t = **tok;
  for (const char* text : {"Hello world", "  a\tb\n\xE2\x96\x81", "\xFF\xC3", "<s>[INST]", ""}) {
    auto ids = t.encode(text, true, true);
    if (!ids.ok()) {  // only the SentencePiece library (non-BPE models) may refuse, with a clean error
      fuzz::require(t.uses_sentencepiece_library(), "the built-in encoder failed on a loaded model");
      fuzz::check_error(ids.error(), name);
      continue;
    }
    for (int32_t id : *ids) fuzz::require(id >= 0 && id < t.n_vocab(), "encode produced an id out of range");
    auto text_back = t.decode(*ids);
    fuzz::require(text_back.ok(), "decode of encoded ids failed");
  }
  std::vector<int32_t> ids;
  for (size_t i = 0; i < size && ids.size() < 64; i += 2)
    ids.push_back(static_cast<int32_t>(data[i] % t.n_vocab()));
  auto whole = t.decode(ids);
  fuzz::require(whole.ok(), "decode of in-range ids failed");
  StreamingDecoder d(t);
  std::string streamed;
  for (int32_t id : ids) streamed += *d.push(id);
  streamed += d.finish();
  fuzz::require(streamed == *whole, "streaming decode differs from decode");
  return 0;
}

}  // namespace mixtral
