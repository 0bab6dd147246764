// SentencePiece ModelProto (sentencepiece_model.proto, proto2) read and written with a minimal wire-format
// codec: the Debian package ships no generated protobuf headers, and our own parser lets every corrupt or
// truncated file fail with a message naming the file and field instead of reaching the library.
#include <cstdio>
#include <cstring>
#include <string>

#include "io/quote.h"
#include "tokenizer/model_spec.h"

namespace mixtral::tok {
namespace {

enum Wire : uint32_t { kVarint = 0, kFixed64 = 1, kLen = 2, kFixed32 = 5 };

// Reads one message's fields in order; `what` names it in messages ("pieces[17]", "trainer_spec").
class WireReader {
 public:
  WireReader(std::string_view buf, size_t base, const std::string& file, std::string what)
      : buf_(buf), base_(base), file_(file), what_(std::move(what)) {}

  bool done() const { return pos_ >= buf_.size(); }

  // Next tag: field number and wire type.
  Status next(uint32_t& field, uint32_t& wire) {
    uint64_t tag = 0;
    MX_TRY_STATUS(varint(tag));
    field = static_cast<uint32_t>(tag >> 3);
    wire = static_cast<uint32_t>(tag & 7);
    if (field == 0) return bad("field number 0");
    return {};
  }
  Status varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      if (pos_ >= buf_.size()) return bad("truncated varint");
      const uint8_t b = static_cast<uint8_t>(buf_[pos_++]);
      if (shift == 63 && b > 1) return bad("varint overflows 64 bits");
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return {};
    }
    return bad("varint longer than 10 bytes");
  }
  Status bytes(std::string_view& out, size_t& offset) {
    uint64_t n = 0;
    MX_TRY_STATUS(varint(n));
    if (n > buf_.size() - pos_) return bad("length " + std::to_string(n) + " runs past the end");
    offset = base_ + pos_;
    out = buf_.substr(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return {};
  }
  Status fixed32(uint32_t& v) {
    if (buf_.size() - pos_ < 4) return bad("truncated fixed32");
    std::memcpy(&v, buf_.data() + pos_, 4);
    pos_ += 4;
    return {};
  }
  Status skip(uint32_t wire) {
    uint64_t v = 0;
    std::string_view s;
    size_t off = 0;
    uint32_t f32 = 0;
    switch (wire) {
      case kVarint:
        return varint(v);
      case kFixed64:
        if (buf_.size() - pos_ < 8) return bad("truncated fixed64");
        pos_ += 8;
        return {};
      case kLen:
        return bytes(s, off);
      case kFixed32:
        return fixed32(f32);
      default:
        return bad("unsupported wire type " + std::to_string(wire));
    }
  }
  // Reads a field of the expected wire type; any other wire type is an error naming the field.
  Status expect(uint32_t wire, uint32_t want, const char* field) {
    if (wire != want) return bad(std::string(field) + " has wire type " + std::to_string(wire));
    return {};
  }
  Error bad(const std::string& why) const {
    return Error::data(file_ + ": not a valid SentencePiece model: " + what_ + ": " + why + " (at byte " +
                       std::to_string(base_ + pos_) + ")");
  }
  size_t base() const { return base_; }

 private:
  std::string_view buf_;
  size_t base_;
  size_t pos_ = 0;
  const std::string& file_;
  std::string what_;
};

Status read_piece(std::string_view msg, size_t base, const std::string& file, size_t index, ModelSpec& spec) {
  WireReader r(msg, base, file, "pieces[" + std::to_string(index) + "]");
  std::string piece;
  float score = 0.0f;
  int64_t type = 1;  // NORMAL
  while (!r.done()) {
    uint32_t field = 0, wire = 0;
    MX_TRY_STATUS(r.next(field, wire));
    if (field == 1) {  // piece
      MX_TRY_STATUS(r.expect(wire, kLen, "piece"));
      std::string_view s;
      size_t off = 0;
      MX_TRY_STATUS(r.bytes(s, off));
      piece.assign(s);
    } else if (field == 2) {  // score
      MX_TRY_STATUS(r.expect(wire, kFixed32, "score"));
      uint32_t bits = 0;
      MX_TRY_STATUS(r.fixed32(bits));
      std::memcpy(&score, &bits, 4);
    } else if (field == 3) {  // type
      MX_TRY_STATUS(r.expect(wire, kVarint, "type"));
      uint64_t v = 0;
      MX_TRY_STATUS(r.varint(v));
      type = static_cast<int64_t>(v);
    } else {
      MX_TRY_STATUS(r.skip(wire));
    }
  }
  if (type < 1 || type > 6) return r.bad("type " + std::to_string(type) + " is not a piece type (1..6)");
  spec.pieces.push_back(std::move(piece));
  spec.scores.push_back(score);
  spec.types.push_back(static_cast<TokenType>(type));
  return {};
}

int32_t as_i32(uint64_t v) {
  return static_cast<int32_t>(static_cast<int64_t>(v));
}

Status read_trainer_spec(std::string_view msg, size_t base, const std::string& file, ModelSpec& spec) {
  WireReader r(msg, base, file, "trainer_spec");
  while (!r.done()) {
    uint32_t field = 0, wire = 0;
    MX_TRY_STATUS(r.next(field, wire));
    uint64_t v = 0;
    switch (field) {
      case 3:   // model_type
      case 24:  // treat_whitespace_as_suffix
      case 35:  // byte_fallback
      case 40:  // unk_id
      case 41:  // bos_id
      case 42:  // eos_id
      case 43:  // pad_id
        MX_TRY_STATUS(r.expect(wire, kVarint, "trainer_spec field"));
        MX_TRY_STATUS(r.varint(v));
        if (field == 3) spec.model_type = static_cast<ModelType>(as_i32(v));
        if (field == 24) spec.treat_whitespace_as_suffix = v != 0;
        if (field == 35) spec.byte_fallback = v != 0;
        if (field == 40) spec.unk_id = as_i32(v);
        if (field == 41) spec.bos_id = as_i32(v);
        if (field == 42) spec.eos_id = as_i32(v);
        if (field == 43) spec.pad_id = as_i32(v);
        break;
      case 44: {  // unk_surface
        MX_TRY_STATUS(r.expect(wire, kLen, "unk_surface"));
        std::string_view s;
        size_t off = 0;
        MX_TRY_STATUS(r.bytes(s, off));
        spec.unk_surface.assign(s);
        break;
      }
      default:
        MX_TRY_STATUS(r.skip(wire));
    }
  }
  return {};
}

Status read_normalizer_spec(std::string_view msg, size_t base, const std::string& file, ModelSpec& spec,
                            bool denormalizer) {
  WireReader r(msg, base, file, denormalizer ? "denormalizer_spec" : "normalizer_spec");
  while (!r.done()) {
    uint32_t field = 0, wire = 0;
    MX_TRY_STATUS(r.next(field, wire));
    uint64_t v = 0;
    std::string_view s;
    size_t off = 0;
    if (field == 1 || field == 2) {  // name, precompiled_charsmap
      MX_TRY_STATUS(r.expect(wire, kLen, field == 1 ? "name" : "precompiled_charsmap"));
      MX_TRY_STATUS(r.bytes(s, off));
      if (denormalizer) {
        if (field == 2 && !s.empty()) spec.has_denormalizer = true;
      } else if (field == 1) {
        spec.normalizer_name.assign(s);
      } else {
        spec.precompiled_charsmap.assign(s);
      }
    } else if (field >= 3 && field <= 5 && !denormalizer) {
      MX_TRY_STATUS(r.expect(wire, kVarint, "normalizer_spec flag"));
      MX_TRY_STATUS(r.varint(v));
      if (field == 3) spec.add_dummy_prefix = v != 0;
      if (field == 4) spec.remove_extra_whitespaces = v != 0;
      if (field == 5) spec.escape_whitespaces = v != 0;
    } else {
      MX_TRY_STATUS(r.skip(wire));
    }
  }
  return {};
}

// --- writer ---------------------------------------------------------------------------------------

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
void put_tag(std::string& out, uint32_t field, uint32_t wire) {
  put_varint(out, (field << 3) | wire);
}
void put_int(std::string& out, uint32_t field, int64_t v) {
  put_tag(out, field, kVarint);
  put_varint(out, static_cast<uint64_t>(v));
}
void put_bytes(std::string& out, uint32_t field, std::string_view s) {
  put_tag(out, field, kLen);
  put_varint(out, s.size());
  out.append(s);
}

}  // namespace

std::string one_line(std::string_view s, size_t max_len) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max_len; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > max_len) out += "...";
  return out;
}

int piece_to_byte(std::string_view p) {
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  int v = 0;
  for (char c : p.substr(3, 2)) {
    v <<= 4;
    if (c >= '0' && c <= '9') {
      v |= c - '0';
    } else if (c >= 'A' && c <= 'F') {
      v |= c - 'A' + 10;
    } else {
      return -1;  // SentencePiece spells bytes with upper-case hex only
    }
  }
  return v;
}

Result<ModelSpec> parse_model_proto(std::string_view bytes, const std::string& name) {
  ModelSpec spec;
  spec.source = name;
  // proto2 defaults of the fields we read (sentencepiece_model.proto).
  spec.model_type = ModelType::kUnigram;
  spec.unk_id = 0;
  spec.bos_id = 1;
  spec.eos_id = 2;
  spec.pad_id = -1;
  spec.remove_extra_whitespaces = true;
  spec.normalizer_name.clear();
  if (bytes.empty()) return Error::data(name + ": not a valid SentencePiece model: the file is empty");
  WireReader r(bytes, 0, name, "ModelProto");
  while (!r.done()) {
    uint32_t field = 0, wire = 0;
    MX_TRY_STATUS(r.next(field, wire));
    if (field >= 1 && field <= 5) {
      MX_TRY_STATUS(r.expect(wire, kLen, "ModelProto field"));
      std::string_view msg;
      size_t off = 0;
      MX_TRY_STATUS(r.bytes(msg, off));
      if (field == 1) {
        MX_TRY_STATUS(read_piece(msg, off, name, spec.pieces.size(), spec));
      } else if (field == 2) {
        MX_TRY_STATUS(read_trainer_spec(msg, off, name, spec));
      } else if (field == 3) {
        MX_TRY_STATUS(read_normalizer_spec(msg, off, name, spec, false));
      } else if (field == 5) {
        MX_TRY_STATUS(read_normalizer_spec(msg, off, name, spec, true));
      }
    } else {
      MX_TRY_STATUS(r.skip(wire));
    }
  }
  if (spec.pieces.empty()) return Error::data(name + ": not a valid SentencePiece model: it has no pieces");
  // SentencePiece finds <unk> by type, and <s>/</s> by spelling; keep ids that point at real pieces.
  const auto n = static_cast<int32_t>(spec.pieces.size());
  spec.unk_id = -1;
  for (int32_t i = 0; i < n; ++i)
    if (spec.types[static_cast<size_t>(i)] == TokenType::kUnknown) {
      spec.unk_id = i;
      break;
    }
  if (spec.bos_id >= n) spec.bos_id = -1;
  if (spec.eos_id >= n) spec.eos_id = -1;
  if (spec.unk_id < 0) return Error::data(name + ": the SentencePiece model has no piece of type UNKNOWN");
  spec.proto.assign(bytes);
  MX_TRY_STATUS(validate_spec(spec, "pieces", "pieces.score", "pieces.type"));
  return spec;
}

std::string serialize_model_proto(const ModelSpec& spec) {
  std::string out, msg;
  for (size_t i = 0; i < spec.pieces.size(); ++i) {
    msg.clear();
    put_bytes(msg, 1, spec.pieces[i]);
    put_tag(msg, 2, kFixed32);
    char f[4];
    std::memcpy(f, &spec.scores[i], 4);
    msg.append(f, 4);
    put_int(msg, 3, static_cast<int64_t>(spec.types[i]));
    put_bytes(out, 1, msg);
  }
  msg.clear();
  put_int(msg, 3, static_cast<int64_t>(spec.model_type));
  put_int(msg, 4, static_cast<int64_t>(spec.pieces.size()));
  put_int(msg, 24, spec.treat_whitespace_as_suffix);
  put_int(msg, 35, spec.byte_fallback);
  put_int(msg, 40, spec.unk_id);
  put_int(msg, 41, spec.bos_id);
  put_int(msg, 42, spec.eos_id);
  put_int(msg, 43, spec.pad_id);
  put_bytes(msg, 44, spec.unk_surface);
  if (spec.unk_id >= 0) put_bytes(msg, 45, spec.pieces[static_cast<size_t>(spec.unk_id)]);
  if (spec.bos_id >= 0) put_bytes(msg, 46, spec.pieces[static_cast<size_t>(spec.bos_id)]);
  if (spec.eos_id >= 0) put_bytes(msg, 47, spec.pieces[static_cast<size_t>(spec.eos_id)]);
  put_bytes(out, 2, msg);
  msg.clear();
  put_bytes(msg, 1, spec.normalizer_name);
  put_bytes(msg, 2, spec.precompiled_charsmap);
  put_int(msg, 3, spec.add_dummy_prefix);
  put_int(msg, 4, spec.remove_extra_whitespaces);
  put_int(msg, 5, spec.escape_whitespaces);
  put_bytes(out, 3, msg);
  return out;
}

Status validate_spec(ModelSpec& spec, const char* pieces_field, const char* scores_field,
                     const char* types_field) {
  const std::string& src = spec.source;
  const size_t n = spec.pieces.size();
  if (n == 0) return Error::data(src + ": " + pieces_field + " is empty");
  if (n > (1u << 30))
    return Error::data(src + ": " + pieces_field + " has " + std::to_string(n) + " entries");
  if (spec.scores.size() != n)
    return Error::data(src + ": " + scores_field + " has " + std::to_string(spec.scores.size()) +
                       " entries but " + pieces_field + " has " + std::to_string(n));
  if (spec.types.size() != n)
    return Error::data(src + ": " + types_field + " has " + std::to_string(spec.types.size()) +
                       " entries but " + pieces_field + " has " + std::to_string(n));
  bool bytes_seen[256] = {};
  int n_bytes = 0;
  for (size_t i = 0; i < n; ++i) {
    if (spec.pieces[i].empty())
      return Error::data(src + ": " + pieces_field + "[" + std::to_string(i) + "] is an empty piece");
    // As newer SentencePiece releases do (Debian's 0.1.97 aborts on such models): no NUL, bounded length.
    if (spec.pieces[i].find('\0') != std::string::npos)
      return Error::data(src + ": " + pieces_field + "[" + std::to_string(i) + "] contains a NUL byte");
    if (spec.pieces[i].size() >= 8000)
      return Error::data(src + ": " + pieces_field + "[" + std::to_string(i) + "] is " +
                         std::to_string(spec.pieces[i].size()) + " bytes long (limit 8000)");
    if (spec.types[i] == TokenType::kByte) {
      const int b = piece_to_byte(spec.pieces[i]);
      if (b < 0)
        return Error::data(src + ": " + pieces_field + "[" + std::to_string(i) + "] " +
                           quote_name(spec.pieces[i]) + " has type byte but is not spelled <0xXX>");
      if (!bytes_seen[b]) ++n_bytes;
      bytes_seen[b] = true;
    }
  }
  // Byte fallback needs all 256 byte pieces (SentencePiece refuses a model that claims it without them).
  if (spec.byte_fallback && n_bytes != 256)
    return Error::data(src + ": byte_fallback is set but only " + std::to_string(n_bytes) +
                       " of the 256 <0xXX> byte pieces exist");
  if (!spec.byte_fallback && n_bytes > 0) {
    if (!spec.proto.empty())  // as SentencePiece: byte pieces without the flag are an error
      return Error::data(src + ": the model has byte pieces but trainer_spec.byte_fallback is false");
    // GGUF and tokenizer.json carry no flag: byte fallback is on when all 256 byte pieces exist.
    spec.byte_fallback = n_bytes == 256;
  }
  if (spec.unk_id < 0 && !spec.byte_fallback)
    return Error::data(src + ": the vocabulary has no unknown piece (<unk>) and no byte fallback");
  return {};
}

}  // namespace mixtral::tok
