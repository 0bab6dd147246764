// mixtral::Tokenizer: loading from every source, encoding (built-in exact BPE or the SentencePiece library),
// decoding and streaming decoding with SentencePiece's rules.
#include <sentencepiece_processor.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace mixtral {
namespace {

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
std::string dirname_of(const std::string& p) {
  const size_t slash = p.find_last_of('/');
  return slash == std::string::npos ? "." : p.substr(0, slash);
}

Result<std::string> read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Error::io(path + ": cannot open file");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return Error::io(path + ": read error");
  return ss.str();
}

bool has_gguf_magic(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char magic[4] = {};
  return f.read(magic, 4) && std::string_view(magic, 4) == "GGUF";
}

}  // namespace

Status Tokenizer::Impl::encode_plain(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return {};
  if (builtin) {
    bpe.encode(text, out);
    return {};
  }
  std::vector<int> ids;
  const auto st = sp->Encode(text, &ids);
  if (!st.ok()) return Error::data(spec.source + ": SentencePiece: " + tok::one_line(st.ToString()));
  out.insert(out.end(), ids.begin(), ids.end());
  return {};
}

int32_t Tokenizer::Impl::match_special(std::string_view text, size_t* len) const {
  const auto& cands = special_by_byte[static_cast<uint8_t>(text[0])];
  for (int32_t id : cands) {  // longest first
    const std::string& p = spec.pieces[static_cast<size_t>(id)];
    if (text.substr(0, p.size()) == p) {
      *len = p.size();
      return id;
    }
  }
  return -1;
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

namespace {

// Builds the encoder(s) over a validated spec.
Result<std::unique_ptr<Tokenizer::Impl>> build(tok::ModelSpec spec, const TokenizerOptions& opts) {
  auto impl = std::make_unique<Tokenizer::Impl>();
  impl->spec = std::move(spec);
  tok::ModelSpec& s = impl->spec;
  std::string why;
  impl->builtin = opts.backend == TokenizerBackend::kAuto && tok::BpeEncoder::supports(s, &why);
  if (impl->builtin) {
    impl->bpe.init(s);
  } else {
    // Debian's SentencePiece library, fed the file's own ModelProto or one serialized from the spec.
    const std::string proto = s.proto.empty() ? tok::serialize_model_proto(s) : s.proto;
    impl->sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
    std::string err;
    try {
      const auto st = impl->sp->LoadFromSerializedProto(proto);
      if (!st.ok()) err = tok::one_line(st.ToString());
    } catch (const std::exception& e) {  // the library's trie builder throws on some malformed models
      err = tok::one_line(e.what());
    }
    if (!err.empty()) return Error::data(s.source + ": SentencePiece cannot load this vocabulary: " + err);
  }
  impl->special_by_byte.assign(256, {});
  for (size_t i = 0; i < s.pieces.size(); ++i)
    if (s.types[i] == TokenType::kControl || s.types[i] == TokenType::kUnknown)
      impl->special_by_byte[static_cast<uint8_t>(s.pieces[i][0])].push_back(static_cast<int32_t>(i));
  for (auto& ids : impl->special_by_byte)
    std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
      return s.pieces[static_cast<size_t>(a)].size() > s.pieces[static_cast<size_t>(b)].size();
    });
  return impl;
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_sentencepiece(std::string_view proto,
                                                                 const std::string& name,
                                                                 const TokenizerOptions& opts) {
  MX_ASSIGN_OR_RETURN(tok::ModelSpec spec, tok::parse_model_proto(proto, name));
  MX_ASSIGN_OR_RETURN(auto impl, build(std::move(spec), opts));
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_vocab(Vocab v, const std::string& name,
                                                         const TokenizerOptions& opts) {
  tok::ModelSpec spec;
  spec.source = name;
  spec.pieces = std::move(v.pieces);
  spec.scores = std::move(v.scores);
  spec.types = std::move(v.types);
  const auto n = static_cast<int32_t>(spec.pieces.size());
  for (auto [id, field] :
       {std::pair<int32_t, const char*>{v.unk_id, "unk_id"}, {v.bos_id, "bos_id"}, {v.eos_id, "eos_id"}})
    if (id < -1 || id >= n)
      return Error::usage(name + ": " + field + " = " + std::to_string(id) + " is out of range for " +
                          std::to_string(n) + " pieces");
  spec.unk_id = v.unk_id;
  spec.bos_id = v.bos_id;
  spec.eos_id = v.eos_id;
  if (spec.types.empty() && spec.scores.size() == spec.pieces.size()) {
    spec.types.assign(spec.pieces.size(), TokenType::kNormal);
    for (size_t i = 0; i < spec.pieces.size(); ++i)
      if (tok::piece_to_byte(spec.pieces[i]) >= 0) spec.types[i] = TokenType::kByte;
    if (spec.bos_id >= 0) spec.types[static_cast<size_t>(spec.bos_id)] = TokenType::kControl;
    if (spec.eos_id >= 0) spec.types[static_cast<size_t>(spec.eos_id)] = TokenType::kControl;
    if (spec.unk_id >= 0) spec.types[static_cast<size_t>(spec.unk_id)] = TokenType::kUnknown;
  }
  spec.add_bos = v.add_bos;
  spec.add_eos = v.add_eos;
  spec.add_dummy_prefix = v.add_dummy_prefix;
  spec.chat_template = std::move(v.chat_template);
  MX_TRY_STATUS(tok::validate_spec(spec, "pieces", "scores", "types"));
  MX_ASSIGN_OR_RETURN(auto impl, build(std::move(spec), opts));
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::load(const std::string& path, const TokenizerOptions& opts) {
  tok::ModelSpec spec;
  std::string config;  // tokenizer_config.json to read, if any
  std::string file = path;
  if (is_dir(path)) {
    const std::string dir = ends_with(path, "/") ? path : path + "/";
    file.clear();
    for (const char* name : {"tokenizer.model.v3", "tokenizer.model", "tokenizer.json"})
      if (is_file(dir + name)) {
        file = dir + name;
        break;
      }
    if (file.empty())
      return Error::data(path +
                         ": no tokenizer in this directory (looked for tokenizer.model.v3, tokenizer.model, "
                         "tokenizer.json)");
    config = dir + "tokenizer_config.json";
  } else if (!is_file(path)) {
    return Error::io(path + ": no such file or directory");
  } else {
    config = dirname_of(path) + "/tokenizer_config.json";
  }
  if (ends_with(file, ".gguf") || has_gguf_magic(file)) {
    MX_ASSIGN_OR_RETURN(spec, tok::read_gguf_spec(file));
    config.clear();  // a GGUF carries its own settings
  } else if (ends_with(file, ".json")) {
    MX_ASSIGN_OR_RETURN(spec, tok::read_tokenizer_json(file));
  } else {
    MX_ASSIGN_OR_RETURN(std::string bytes, read_all(file));
    MX_ASSIGN_OR_RETURN(spec, tok::parse_model_proto(bytes, file));
  }
  if (!config.empty()) MX_TRY_STATUS(tok::read_tokenizer_config(config, spec));
  MX_ASSIGN_OR_RETURN(auto impl, build(std::move(spec), opts));
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

Result<std::vector<int32_t>> Tokenizer::encode(std::string_view text, bool add_bos,
                                               bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  const Impl& im = *impl_;
  if (add_bos && im.spec.bos_id >= 0) out.push_back(im.spec.bos_id);
  if (!parse_special) {
    MX_TRY_STATUS(im.encode_plain(text, out));
    return out;
  }
  size_t start = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t len = 0;
    const int32_t id = im.special_by_byte[static_cast<uint8_t>(text[pos])].empty()
                           ? -1
                           : im.match_special(text.substr(pos), &len);
    if (id < 0) {
      ++pos;
      continue;
    }
    MX_TRY_STATUS(im.encode_plain(text.substr(start, pos - start), out));
    out.push_back(id);
    pos += len;
    start = pos;
  }
  MX_TRY_STATUS(im.encode_plain(text.substr(start), out));
  return out;
}

Result<std::string> Tokenizer::decode(const std::vector<int32_t>& ids) const {
  StreamingDecoder d(*this, true);
  std::string out;
  for (int32_t id : ids) {
    MX_ASSIGN_OR_RETURN(std::string piece, d.push(id));
    out += piece;
  }
  out += d.finish();
  return out;
}

int32_t Tokenizer::n_vocab() const {
  return static_cast<int32_t>(impl_->spec.pieces.size());
}
int32_t Tokenizer::bos_id() const {
  return impl_->spec.bos_id;
}
int32_t Tokenizer::eos_id() const {
  return impl_->spec.eos_id;
}
int32_t Tokenizer::unk_id() const {
  return impl_->spec.unk_id;
}
bool Tokenizer::add_bos() const {
  return impl_->spec.add_bos;
}
bool Tokenizer::add_eos() const {
  return impl_->spec.add_eos;
}
const std::string& Tokenizer::chat_template() const {
  return impl_->spec.chat_template;
}
const std::string& Tokenizer::source() const {
  return impl_->spec.source;
}
bool Tokenizer::uses_sentencepiece_library() const {
  return !impl_->builtin;
}

const std::string& Tokenizer::piece(int32_t id) const {
  static const std::string kEmpty;
  return id >= 0 && id < n_vocab() ? impl_->spec.pieces[static_cast<size_t>(id)] : kEmpty;
}
float Tokenizer::score(int32_t id) const {
  return id >= 0 && id < n_vocab() ? impl_->spec.scores[static_cast<size_t>(id)] : 0.0f;
}
TokenType Tokenizer::type(int32_t id) const {
  return id >= 0 && id < n_vocab() ? impl_->spec.types[static_cast<size_t>(id)] : TokenType::kUnknown;
}
int32_t Tokenizer::piece_to_id(std::string_view p) const {
  const auto& pieces = impl_->spec.pieces;
  for (size_t i = 0; i < pieces.size(); ++i)
    if (pieces[i] == p) return static_cast<int32_t>(i);
  return -1;
}

// --- streaming decoder ---------------------------------------------------------------------------------

StreamingDecoder::StreamingDecoder(const Tokenizer& tok, bool at_sequence_start) : tok_(&tok) {
  reset(at_sequence_start);
}

void StreamingDecoder::reset(bool at_sequence_start) {
  pending_.clear();
  is_bos_ws_ = at_sequence_start;
  bos_ws_seen_ = false;
  emitted_ = !at_sequence_start;
}

// Emits the held byte-piece bytes that are decided: each well-formed character as is, each byte that cannot
// start one as U+FFFD (SentencePiece's ProcessBytePieces). An unfinished character is held unless the run
// of byte pieces has ended.
std::string StreamingDecoder::flush_bytes(bool run_ended) {
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    const auto lead = static_cast<uint8_t>(pending_[i]);
    const size_t want = lead < 0x80             ? 1
                        : (lead & 0xE0) == 0xC0 ? 2
                        : (lead & 0xF0) == 0xE0 ? 3
                        : (lead & 0xF8) == 0xF0 ? 4
                                                : 1;
    const size_t have = pending_.size() - i;
    if (!run_ended && have < want) {
      bool broken = false;  // a non-continuation byte already seen: the character can never complete
      for (size_t k = 1; k < have; ++k)
        broken = broken || !tok::is_trail(static_cast<uint8_t>(pending_[i + k]));
      if (!broken) break;
    }
    const size_t len = tok::valid_char_len(std::string_view(pending_).substr(i));
    if (len == 0) {
      out.append(tok::kReplacement);
      ++i;
    } else {
      out.append(pending_, i, len);
      i += len;
    }
  }
  pending_.erase(0, i);
  if (!out.empty()) emitted_ = true;
  return out;
}

Result<std::string> StreamingDecoder::push(int32_t id) {
  const Tokenizer& t = *tok_;
  if (id < 0 || id >= t.n_vocab())
    return Error::usage("token id " + std::to_string(id) + " is out of range for the " +
                        std::to_string(t.n_vocab()) + " pieces of " + t.source());
  const TokenType type = t.type(id);
  const std::string& piece = t.piece(id);
  if (type == TokenType::kByte) {
    pending_ += static_cast<char>(tok::piece_to_byte(piece));
    return flush_bytes(false);
  }
  std::string out = flush_bytes(true);
  // SentencePiece's Decode: only the first piece that can carry the dummy prefix loses its "▁".
  if (bos_ws_seen_ || emitted_) is_bos_ws_ = false;
  const auto& spec = t.impl().spec;
  if (type == TokenType::kControl) {
    bos_ws_seen_ = false;  // invisible
  } else if (type == TokenType::kUnknown) {
    out += spec.unk_surface;
    bos_ws_seen_ = false;
  } else {
    std::string_view p = piece;
    bool has_bos_ws = false;
    if (is_bos_ws_ && (spec.add_dummy_prefix || spec.remove_extra_whitespaces)) {
      if (p.substr(0, 3) == tok::kSpaceSymbol) {
        p.remove_prefix(3);
        has_bos_ws = true;
      }
      if (spec.remove_extra_whitespaces) has_bos_ws = false;
    }
    for (size_t pos = 0; pos < p.size();) {
      const size_t hit = p.find(tok::kSpaceSymbol, pos);
      out.append(p.substr(pos, hit == std::string_view::npos ? std::string_view::npos : hit - pos));
      if (hit == std::string_view::npos) break;
      out += ' ';
      pos = hit + 3;
    }
    bos_ws_seen_ = has_bos_ws;
  }
  if (!out.empty()) emitted_ = true;
  return out;
}

std::string StreamingDecoder::finish() {
  return flush_bytes(true);
}

}  // namespace mixtral
