#include "io/gguf.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <set>
#include <utility>

#include "io/quote.h"

namespace mixtral {

// Every multi-byte field is read and written with memcpy in host order, which is GGUF's order.
static_assert(std::endian::native == std::endian::little, "GGUF I/O assumes a little-endian host");

namespace {

constexpr uint32_t kMaxDims = 4;
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint64_t kMaxAlignment = uint64_t{1} << 31;  // the largest power of two a u32 holds
const char* const kAlignmentKey = "general.alignment";
constexpr uint64_t kMaxDataBytes = uint64_t{1} << 62;  // bound on tensor and data sizes; keeps sums exact

// Smallest encodings, used to reject counts that cannot fit in the bytes that remain:
// a kv pair is key length (8) + type (4) + at least one value byte; a tensor info is name length (8)
// + n_dims (4) + type (4) + offset (8).
constexpr uint64_t kMinKvBytes = 13;
constexpr uint64_t kMinTensorInfoBytes = 24;

std::string type_name(GgufType t) {
  switch (t) {
    case GgufType::kU8:
      return "u8";
    case GgufType::kI8:
      return "i8";
    case GgufType::kU16:
      return "u16";
    case GgufType::kI16:
      return "i16";
    case GgufType::kU32:
      return "u32";
    case GgufType::kI32:
      return "i32";
    case GgufType::kF32:
      return "f32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kU64:
      return "u64";
    case GgufType::kI64:
      return "i64";
    case GgufType::kF64:
      return "f64";
  }
  return "type " + std::to_string(static_cast<uint32_t>(t));
}

std::string value_type_name(const GgufValue& v) {
  return v.type == GgufType::kArray ? "array of " + type_name(v.array_type) : type_name(v.type);
}

bool is_known_type(uint32_t t) {
  return t <= static_cast<uint32_t>(GgufType::kF64);
}

bool is_signed_int(GgufType t) {
  return t == GgufType::kI8 || t == GgufType::kI16 || t == GgufType::kI32 || t == GgufType::kI64;
}
bool is_unsigned_int(GgufType t) {
  return t == GgufType::kU8 || t == GgufType::kU16 || t == GgufType::kU32 || t == GgufType::kU64;
}
bool is_int(GgufType t) {
  return is_signed_int(t) || is_unsigned_int(t);
}
bool is_float(GgufType t) {
  return t == GgufType::kF32 || t == GgufType::kF64;
}

// Encoded size of a scalar of type t (strings: their length prefix only).
size_t scalar_bytes(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
    case GgufType::kString:
      return 8;
    case GgufType::kArray:
      return 12;  // element type + count
  }
  return 1;
}

uint64_t align_up(uint64_t x, uint64_t a) {
  return (x + a - 1) & ~(a - 1);
}

// Bounds-checked little-endian reads over the input bytes; errors name the file and `where_`
// (the key or tensor being read).
class Parser {
 public:
  Parser(const uint8_t* data, size_t size, const std::string& name) : data_(data), size_(size), name_(name) {}

  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }
  void skip(size_t n) { pos_ += n; }
  void set_where(std::string w) { where_ = std::move(w); }

  Error fail(const std::string& msg) const { return Error::data(name_ + ": " + msg); }
  Error fail_here(const std::string& msg) const { return fail(where_ + ": " + msg); }

  Error truncated(const char* what, uint64_t need) const {
    return fail("truncated file: " + where_ + (where_.empty() ? "" : " ") + what + " at offset " +
                std::to_string(pos_) + " needs " + std::to_string(need) + " bytes, the file has " +
                std::to_string(left()) + " left (size " + std::to_string(size_) + ")");
  }

  template <class T>
  Status read(T& out, const char* what) {
    if (left() < sizeof(T)) return truncated(what, sizeof(T));
    std::memcpy(&out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return {};
  }

  Status read_string(std::string& out, const char* what) {
    uint64_t n{};
    MX_TRY_STATUS(read(n, what));
    if (n > left()) return truncated(what, n);
    out.assign(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return {};
  }

  // One integer of GGUF type t, widened (signed types to int64, unsigned to uint64).
  template <class Out>
  Status read_int(GgufType t, Out& out) {
    switch (t) {
      case GgufType::kU8:
        return read_as<uint8_t>(out);
      case GgufType::kI8:
        return read_as<int8_t>(out);
      case GgufType::kU16:
        return read_as<uint16_t>(out);
      case GgufType::kI16:
        return read_as<int16_t>(out);
      case GgufType::kU32:
        return read_as<uint32_t>(out);
      case GgufType::kI32:
        return read_as<int32_t>(out);
      case GgufType::kU64:
        return read_as<uint64_t>(out);
      case GgufType::kI64:
        return read_as<int64_t>(out);
      default:
        MX_CHECK(false, "read_int of a non-integer type");
    }
  }

  Status read_float(GgufType t, double& out) {
    if (t == GgufType::kF64) return read(out, "value");
    float f{};
    MX_TRY_STATUS(read(f, "value"));
    out = f;
    return {};
  }

  Status read_bool(bool& out) {
    uint8_t b{};
    MX_TRY_STATUS(read(b, "value"));
    out = b != 0;
    return {};
  }

  Status read_value(GgufType type, GgufValue& out);

 private:
  template <class Raw, class Out>
  Status read_as(Out& out) {
    Raw r{};
    MX_TRY_STATUS(read(r, "value"));
    out = static_cast<Out>(r);
    return {};
  }

  Status read_array(GgufValue& out);

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& name_;
  std::string where_;
};

Status Parser::read_value(GgufType type, GgufValue& out) {
  out.type = type;
  if (is_signed_int(type)) {
    int64_t v{};
    MX_TRY_STATUS(read_int(type, v));
    out.v = v;
  } else if (is_unsigned_int(type)) {
    uint64_t v{};
    MX_TRY_STATUS(read_int(type, v));
    out.v = v;
  } else if (is_float(type)) {
    double v{};
    MX_TRY_STATUS(read_float(type, v));
    out.v = v;
  } else if (type == GgufType::kBool) {
    bool v{};
    MX_TRY_STATUS(read_bool(v));
    out.v = v;
  } else if (type == GgufType::kString) {
    std::string s;
    MX_TRY_STATUS(read_string(s, "string"));
    out.v = std::move(s);
  } else {
    return read_array(out);
  }
  return {};
}

// Array: element type u32, count u64, then the elements. Integer and bool elements are kept as
// int64, floats as double, strings as strings; arrays of arrays are refused (llama.cpp refuses them too).
Status Parser::read_array(GgufValue& out) {
  uint32_t et{};
  MX_TRY_STATUS(read(et, "array element type"));
  if (!is_known_type(et)) return fail_here("unknown array element type " + std::to_string(et));
  const auto elem = static_cast<GgufType>(et);
  if (elem == GgufType::kArray) return fail_here("arrays of arrays are not supported");
  out.array_type = elem;
  uint64_t n{};
  MX_TRY_STATUS(read(n, "array length"));
  if (n > left() / scalar_bytes(elem))
    return fail_here("array of " + std::to_string(n) + " " + type_name(elem) +
                     " elements runs past the end of the file (size " + std::to_string(size_) + ")");
  const auto count = static_cast<size_t>(n);
  if (elem == GgufType::kString) {
    std::vector<std::string> v(count);
    for (auto& s : v) MX_TRY_STATUS(read_string(s, "array string"));
    out.v = std::move(v);
  } else if (is_float(elem)) {
    std::vector<double> v(count);
    for (auto& x : v) MX_TRY_STATUS(read_float(elem, x));
    out.v = std::move(v);
  } else if (elem == GgufType::kBool) {
    std::vector<int64_t> v(count);
    for (auto& x : v) {
      bool b{};
      MX_TRY_STATUS(read_bool(b));
      x = b;
    }
    out.v = std::move(v);
  } else if (elem == GgufType::kU64) {
    std::vector<int64_t> v(count);
    for (size_t i = 0; i < count; ++i) {
      uint64_t u{};
      MX_TRY_STATUS(read(u, "array element"));
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        return fail_here("u64 array element " + std::to_string(i) + " (" + std::to_string(u) +
                         ") does not fit in int64");
      v[i] = static_cast<int64_t>(u);
    }
    out.v = std::move(v);
  } else {
    std::vector<int64_t> v(count);
    for (auto& x : v) MX_TRY_STATUS(read_int(elem, x));
    out.v = std::move(v);
  }
  return {};
}

std::string magic_string(const uint8_t* data, size_t size) {
  std::string s;
  for (size_t i = 0; i < size && i < 4; ++i) {
    char buf[4];
    std::snprintf(buf, sizeof buf, "%s%02x", i ? " " : "", data[i]);
    s += buf;
  }
  return s;
}

}  // namespace

TensorView GgufTensorInfo::view() const {
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.ndim = static_cast<int>(ne.size());
  for (int i = 0; i < v.ndim; ++i) v.shape[i] = ne[ne.size() - 1 - i];
  return v;
}

Result<GgufFile> GgufFile::open(const std::string& path) {
  MX_ASSIGN_OR_RETURN(MappedFile m, MappedFile::open(path));
  auto file = std::make_shared<MappedFile>(std::move(m));
  MX_ASSIGN_OR_RETURN(GgufFile f, parse(file->data(), file->size(), path));
  f.file_ = std::move(file);
  return f;
}

Result<GgufFile> GgufFile::parse(const uint8_t* data, size_t size, const std::string& name) {
  // Counts are checked against the bytes left, but a huge file can still claim more memory than there is.
  try {
    return parse_bytes(data, size, name);
  } catch (const std::bad_alloc&) {
    return Error::data(name + ": out of memory while reading the header");
  }
}

// Layout: magic "GGUF", version u32, tensor count u64, kv count u64, kv pairs (key string, type u32,
// value), tensor infos (name string, n_dims u32, ne[n_dims] u64, ggml type u32, offset u64), padding
// to the alignment, data section. Strings are a u64 length and the bytes, no terminator.
Result<GgufFile> GgufFile::parse_bytes(const uint8_t* data, size_t size, const std::string& name) {
  GgufFile f;
  f.name_ = name;
  Parser p(data, size, name);
  if (size == 0) return p.fail("empty file, not a GGUF file");
  if (size < 4 || std::memcmp(data, "GGUF", 4) != 0)
    return p.fail("not a GGUF file (magic " + magic_string(data, size) + ", expected 47 47 55 46 \"GGUF\")");
  p.skip(4);
  MX_TRY_STATUS(p.read(f.version_, "version"));
  if (f.version_ != 2 && f.version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(f.version_);
    if (swapped == 2 || swapped == 3) return p.fail("big-endian GGUF files are not supported");
    return p.fail("unsupported GGUF version " + std::to_string(f.version_) + " (2 and 3 are supported)");
  }
  uint64_t n_tensors = 0, n_kv = 0;
  MX_TRY_STATUS(p.read(n_tensors, "tensor count"));
  MX_TRY_STATUS(p.read(n_kv, "metadata count"));
  if (n_kv > p.left() / kMinKvBytes)
    return p.fail("metadata count " + std::to_string(n_kv) + " is larger than the file could hold");

  for (uint64_t i = 0; i < n_kv; ++i) {
    p.set_where("metadata entry " + std::to_string(i));
    std::string key;
    MX_TRY_STATUS(p.read_string(key, "key"));
    p.set_where("key " + quote_name(key));
    if (f.kv_.count(key)) return p.fail_here("duplicate key");
    uint32_t type{};
    MX_TRY_STATUS(p.read(type, "value type"));
    if (!is_known_type(type)) return p.fail_here("unknown value type " + std::to_string(type));
    GgufValue value;
    MX_TRY_STATUS(p.read_value(static_cast<GgufType>(type), value));
    f.kv_.emplace(std::move(key), std::move(value));
  }
  p.set_where("");

  MX_ASSIGN_OR_RETURN(auto alignment, f.get_int(kAlignmentKey));
  if (alignment) {
    const int64_t a = *alignment;
    if (a <= 0 || static_cast<uint64_t>(a) > kMaxAlignment || !std::has_single_bit(static_cast<uint64_t>(a)))
      return p.fail("key '" + std::string(kAlignmentKey) + "' is " + std::to_string(a) +
                    ", expected a nonzero power of two");
    f.alignment_ = static_cast<uint64_t>(a);
  }

  if (n_tensors > p.left() / kMinTensorInfoBytes)
    return p.fail("tensor count " + std::to_string(n_tensors) + " is larger than the file could hold");
  f.tensors_.resize(static_cast<size_t>(n_tensors));
  for (size_t i = 0; i < f.tensors_.size(); ++i) {
    GgufTensorInfo& t = f.tensors_[i];
    p.set_where("tensor info " + std::to_string(i));
    MX_TRY_STATUS(p.read_string(t.name, "name"));
    p.set_where("tensor " + quote_name(t.name));
    if (f.index_.count(t.name)) return p.fail_here("duplicate tensor name");
    f.index_.emplace(t.name, i);
    uint32_t n_dims{};
    MX_TRY_STATUS(p.read(n_dims, "n_dims"));
    if (n_dims > kMaxDims)
      return p.fail_here("n_dims " + std::to_string(n_dims) + ", at most " + std::to_string(kMaxDims) +
                         " are supported");
    t.ne.resize(n_dims);
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne{};
      MX_TRY_STATUS(p.read(ne, "ne"));
      if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        return p.fail_here("ne[" + std::to_string(d) + "] = " + std::to_string(ne) + " is not a valid size");
      t.ne[d] = static_cast<int64_t>(ne);
      if (__builtin_mul_overflow(numel, t.ne[d], &numel)) return p.fail_here("element count overflows");
    }
    MX_TRY_STATUS(p.read(t.ggml_type, "type"));
    MX_TRY_STATUS(p.read(t.offset, "offset"));
    const auto tr = dtype_traits(t.ggml_type);
    if (!tr) return p.fail_here("unknown GGML type " + std::to_string(t.ggml_type));
    t.dtype = static_cast<DType>(t.ggml_type);
    const int64_t row = n_dims ? t.ne[0] : 1;
    if (row % tr->block_size != 0)
      return p.fail_here("row of " + std::to_string(row) + " elements is not a multiple of " +
                         std::string(tr->name) + "'s block size " + std::to_string(tr->block_size));
    if (__builtin_mul_overflow(static_cast<uint64_t>(numel / tr->block_size), tr->block_bytes, &t.nbytes) ||
        t.nbytes > kMaxDataBytes)
      return p.fail_here("data size overflows 2^62 bytes");
  }

  // The data section starts at the end of the tensor infos, rounded up to the alignment.
  const uint64_t data_start = align_up(p.pos(), f.alignment_);
  std::vector<std::pair<uint64_t, size_t>> by_offset;  // (begin, tensor index), sorted below
  by_offset.reserve(f.tensors_.size());
  for (size_t i = 0; i < f.tensors_.size(); ++i) {
    GgufTensorInfo& t = f.tensors_[i];
    p.set_where("tensor " + quote_name(t.name));
    if (t.offset % f.alignment_ != 0)
      return p.fail_here("offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                         std::to_string(f.alignment_));
    uint64_t begin = 0;
    if (__builtin_add_overflow(data_start, t.offset, &begin) || begin > size)
      return p.fail("tensor " + quote_name(t.name) + " data offset " + std::to_string(t.offset) +
                    " runs past the end of the file (size " + std::to_string(size) + ")");
    if (t.nbytes > size - begin)  // begin + nbytes < 2^63 + 2^62: no overflow
      return p.fail("tensor " + quote_name(t.name) + " data [" + std::to_string(begin) + ", " +
                    std::to_string(begin + t.nbytes) + ") runs past the end of the file (size " +
                    std::to_string(size) + ")");
    t.data = data + begin;
    by_offset.emplace_back(begin, i);
  }
  std::sort(by_offset.begin(), by_offset.end());
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const GgufTensorInfo& a = f.tensors_[by_offset[k - 1].second];
    const GgufTensorInfo& b = f.tensors_[by_offset[k].second];
    if (by_offset[k - 1].first + a.nbytes > by_offset[k].first)
      return p.fail("tensors " + quote_name(a.name) + " and " + quote_name(b.name) + " overlap");
  }
  return f;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void GgufFile::release(const void* p, size_t n) const {
  if (file_) file_->release(p, n);
}

namespace {

Error wrong_type(const std::string& file, const std::string& key, const GgufValue& v, const char* expected) {
  return Error::data(file + ": key " + quote_name(key) + " has type " + value_type_name(v) + ", expected " +
                     expected);
}

}  // namespace

Result<std::optional<int64_t>> GgufFile::get_int(const std::string& key) const {
  const auto it = kv_.find(key);
  if (it == kv_.end()) return std::optional<int64_t>();
  const GgufValue& v = it->second;
  if (is_signed_int(v.type)) return std::optional<int64_t>(std::get<int64_t>(v.v));
  if (!is_unsigned_int(v.type)) return wrong_type(name_, key, v, "an integer");
  const uint64_t u = std::get<uint64_t>(v.v);
  if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return Error::data(name_ + ": key " + quote_name(key) + " value " + std::to_string(u) +
                       " is out of range");
  return std::optional<int64_t>(static_cast<int64_t>(u));
}

Result<std::optional<double>> GgufFile::get_float(const std::string& key) const {
  const auto it = kv_.find(key);
  if (it == kv_.end()) return std::optional<double>();
  const GgufValue& v = it->second;
  if (is_float(v.type)) return std::optional<double>(std::get<double>(v.v));
  if (is_signed_int(v.type)) return std::optional<double>(static_cast<double>(std::get<int64_t>(v.v)));
  if (is_unsigned_int(v.type)) return std::optional<double>(static_cast<double>(std::get<uint64_t>(v.v)));
  return wrong_type(name_, key, v, "a number");
}

Result<std::optional<std::string>> GgufFile::get_string(const std::string& key) const {
  const auto it = kv_.find(key);
  if (it == kv_.end()) return std::optional<std::string>();
  if (it->second.type != GgufType::kString) return wrong_type(name_, key, it->second, "string");
  return std::optional<std::string>(std::get<std::string>(it->second.v));
}

Result<std::optional<bool>> GgufFile::get_bool(const std::string& key) const {
  const auto it = kv_.find(key);
  if (it == kv_.end()) return std::optional<bool>();
  if (it->second.type != GgufType::kBool) return wrong_type(name_, key, it->second, "bool");
  return std::optional<bool>(std::get<bool>(it->second.v));
}

Result<std::optional<std::vector<std::string>>> GgufFile::get_string_array(const std::string& key) const {
  const auto it = kv_.find(key);
  if (it == kv_.end()) return std::optional<std::vector<std::string>>();
  const GgufValue& v = it->second;
  if (v.type != GgufType::kArray || v.array_type != GgufType::kString)
    return wrong_type(name_, key, v, "array of string");
  return std::optional<std::vector<std::string>>(std::get<std::vector<std::string>>(v.v));
}

Result<std::optional<std::vector<double>>> GgufFile::get_float_array(const std::string& key) const {
  const auto it = kv_.find(key);
  if (it == kv_.end()) return std::optional<std::vector<double>>();
  const GgufValue& v = it->second;
  if (v.type == GgufType::kArray && is_float(v.array_type))
    return std::optional<std::vector<double>>(std::get<std::vector<double>>(v.v));
  if (v.type == GgufType::kArray && is_int(v.array_type)) {
    const auto& ints = std::get<std::vector<int64_t>>(v.v);
    return std::optional<std::vector<double>>(std::vector<double>(ints.begin(), ints.end()));
  }
  return wrong_type(name_, key, v, "array of numbers");
}

Result<std::optional<std::vector<int64_t>>> GgufFile::get_int_array(const std::string& key) const {
  const auto it = kv_.find(key);
  if (it == kv_.end()) return std::optional<std::vector<int64_t>>();
  const GgufValue& v = it->second;
  if (v.type != GgufType::kArray || !is_int(v.array_type))
    return wrong_type(name_, key, v, "array of integers");
  return std::optional<std::vector<int64_t>>(std::get<std::vector<int64_t>>(v.v));
}

// ---- writer ----

void GgufWriter::set(const std::string& key, GgufValue value) {
  for (auto& [k, v] : kv_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  kv_.emplace_back(key, std::move(value));
}

void GgufWriter::set_u32(const std::string& key, uint32_t v) {
  set(key, {GgufType::kU32, GgufType::kU32, uint64_t{v}});
}
void GgufWriter::set_i32(const std::string& key, int32_t v) {
  set(key, {GgufType::kI32, GgufType::kU32, int64_t{v}});
}
void GgufWriter::set_f32(const std::string& key, float v) {
  set(key, {GgufType::kF32, GgufType::kU32, double{v}});
}
void GgufWriter::set_bool(const std::string& key, bool v) {
  set(key, {GgufType::kBool, GgufType::kU32, v});
}
void GgufWriter::set_string(const std::string& key, const std::string& v) {
  set(key, {GgufType::kString, GgufType::kU32, v});
}
void GgufWriter::set_string_array(const std::string& key, const std::vector<std::string>& v) {
  set(key, {GgufType::kArray, GgufType::kString, v});
}
void GgufWriter::set_f32_array(const std::string& key, const std::vector<float>& v) {
  set(key, {GgufType::kArray, GgufType::kF32, std::vector<double>(v.begin(), v.end())});
}
void GgufWriter::set_i32_array(const std::string& key, const std::vector<int32_t>& v) {
  set(key, {GgufType::kArray, GgufType::kI32, std::vector<int64_t>(v.begin(), v.end())});
}
void GgufWriter::add_tensor(GgufTensorSpec spec) {
  tensors_.push_back(std::move(spec));
}

namespace {

// Serialises the header (everything before the data section) into a byte buffer.
class HeaderBuilder {
 public:
  explicit HeaderBuilder(const std::string& path) : path_(path) {}

  std::vector<uint8_t>& bytes() { return buf_; }

  void put_bytes(const void* p, size_t n) {
    const size_t at = buf_.size();
    buf_.resize(at + n);
    if (n) std::memcpy(buf_.data() + at, p, n);
  }
  template <class T>
  void put(T v) {
    put_bytes(&v, sizeof(T));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    put_bytes(s.data(), s.size());
  }

  Status put_kv(const std::string& key, const GgufValue& v) {
    put_string(key);
    put<uint32_t>(static_cast<uint32_t>(v.type));
    if (v.type != GgufType::kArray) return put_scalar(key, v.type, v.v);
    const GgufType et = v.array_type;
    put<uint32_t>(static_cast<uint32_t>(et));
    if (const auto* s = std::get_if<std::vector<std::string>>(&v.v); s && et == GgufType::kString) {
      put<uint64_t>(s->size());
      for (const auto& x : *s) put_string(x);
      return {};
    }
    if (const auto* d = std::get_if<std::vector<double>>(&v.v); d && is_float(et)) {
      put<uint64_t>(d->size());
      for (double x : *d) MX_TRY_STATUS(put_scalar(key, et, x));
      return {};
    }
    if (const auto* i = std::get_if<std::vector<int64_t>>(&v.v); i && (is_int(et) || et == GgufType::kBool)) {
      put<uint64_t>(i->size());
      for (int64_t x : *i) MX_TRY_STATUS(put_scalar(key, et, x));
      return {};
    }
    return bad(key, "value does not hold an array of " + type_name(et));
  }

 private:
  using Scalar = decltype(GgufValue::v);

  Error bad(const std::string& key, const std::string& msg) const {
    return Error::data(path_ + ": key " + quote_name(key) + ": " + msg);
  }

  template <class T>
  Status put_int(const std::string& key, GgufType t, const Scalar& v) {
    const auto* s = std::get_if<int64_t>(&v);
    const auto* u = std::get_if<uint64_t>(&v);
    if (!s && !u) return bad(key, "value does not hold an integer for type " + type_name(t));
    if (s ? !std::in_range<T>(*s) : !std::in_range<T>(*u))
      return bad(
          key, "value " + (s ? std::to_string(*s) : std::to_string(*u)) + " does not fit in " + type_name(t));
    put<T>(s ? static_cast<T>(*s) : static_cast<T>(*u));
    return {};
  }

  Status put_scalar(const std::string& key, GgufType t, const Scalar& v) {
    switch (t) {
      case GgufType::kU8:
        return put_int<uint8_t>(key, t, v);
      case GgufType::kI8:
        return put_int<int8_t>(key, t, v);
      case GgufType::kU16:
        return put_int<uint16_t>(key, t, v);
      case GgufType::kI16:
        return put_int<int16_t>(key, t, v);
      case GgufType::kU32:
        return put_int<uint32_t>(key, t, v);
      case GgufType::kI32:
        return put_int<int32_t>(key, t, v);
      case GgufType::kU64:
        return put_int<uint64_t>(key, t, v);
      case GgufType::kI64:
        return put_int<int64_t>(key, t, v);
      case GgufType::kF32:
      case GgufType::kF64: {
        const auto* d = std::get_if<double>(&v);
        if (!d) return bad(key, "value does not hold a number for type " + type_name(t));
        if (t == GgufType::kF32) {
          put<float>(static_cast<float>(*d));
        } else {
          put<double>(*d);
        }
        return {};
      }
      case GgufType::kBool: {
        const auto* b = std::get_if<bool>(&v);
        const auto* i = std::get_if<int64_t>(&v);  // elements of a bool array
        if (!b && !(i && (*i == 0 || *i == 1))) return bad(key, "value does not hold a bool");
        put<uint8_t>(b ? *b : *i == 1);
        return {};
      }
      case GgufType::kString: {
        const auto* s = std::get_if<std::string>(&v);
        if (!s) return bad(key, "value does not hold a string");
        put_string(*s);
        return {};
      }
      case GgufType::kArray:
        break;
    }
    return bad(key, "cannot write a value of " + type_name(t));
  }

  const std::string& path_;
  std::vector<uint8_t> buf_;
};

// Where each tensor's bytes go, relative to the data section.
struct TensorPlacement {
  std::vector<int64_t> ne;  // innermost first
  uint64_t offset = 0;
  size_t nbytes = 0;
};

Result<TensorPlacement> place_tensor(const std::string& path, const GgufTensorSpec& spec, uint64_t offset) {
  const std::string where = path + ": tensor " + quote_name(spec.name) + ": ";
  if (spec.name.empty()) return Error::data(path + ": a tensor has an empty name");
  if (!spec.fill) return Error::usage(where + "no fill callback");
  const auto tr = dtype_traits(static_cast<uint32_t>(spec.dtype));
  if (!tr)
    return Error::data(where + "unknown GGML type " + std::to_string(static_cast<uint32_t>(spec.dtype)));
  if (spec.shape.size() > kMaxDims)
    return Error::data(where + std::to_string(spec.shape.size()) + " dimensions, at most 4 are supported");
  TensorPlacement pl;
  pl.offset = offset;
  pl.ne.assign(spec.shape.rbegin(), spec.shape.rend());
  int64_t numel = 1;
  for (int64_t d : spec.shape) {
    if (d <= 0) return Error::data(where + "dimension of size " + std::to_string(d));
    if (__builtin_mul_overflow(numel, d, &numel)) return Error::data(where + "element count overflows");
  }
  const int64_t row = pl.ne.empty() ? 1 : pl.ne[0];
  if (row % tr->block_size != 0)
    return Error::data(where + "row of " + std::to_string(row) + " elements is not a multiple of " +
                       std::string(tr->name) + "'s block size " + std::to_string(tr->block_size));
  if (__builtin_mul_overflow(static_cast<uint64_t>(numel / tr->block_size), tr->block_bytes, &pl.nbytes))
    return Error::data(where + "byte size overflows");
  return pl;
}

}  // namespace

Status GgufWriter::write(const std::string& path, uint32_t version, uint64_t alignment) const {
  if (version != 2 && version != 3)
    return Error::usage(path + ": cannot write GGUF version " + std::to_string(version) + " (2 or 3)");
  if (alignment == 0 || alignment > kMaxAlignment || !std::has_single_bit(alignment))
    return Error::usage(path + ": alignment " + std::to_string(alignment) + " is not a power of two");

  // A non-default alignment must be recorded in the file; a recorded one must match.
  const auto al =
      std::find_if(kv_.begin(), kv_.end(), [](const auto& e) { return e.first == kAlignmentKey; });
  const bool add_alignment_key = al == kv_.end() && alignment != kDefaultAlignment;
  if (al != kv_.end()) {
    const auto* u = std::get_if<uint64_t>(&al->second.v);
    const auto* s = std::get_if<int64_t>(&al->second.v);
    const bool same = is_int(al->second.type) &&
                      ((u && *u == alignment) || (s && *s >= 0 && static_cast<uint64_t>(*s) == alignment));
    if (!same)
      return Error::usage(path + ": key '" + kAlignmentKey + "' disagrees with the alignment " +
                          std::to_string(alignment) + " being written");
  }

  HeaderBuilder h(path);
  h.put_bytes("GGUF", 4);
  h.put<uint32_t>(version);
  h.put<uint64_t>(tensors_.size());
  h.put<uint64_t>(kv_.size() + (add_alignment_key ? 1 : 0));
  for (const auto& [key, value] : kv_) MX_TRY_STATUS(h.put_kv(key, value));
  if (add_alignment_key) MX_TRY_STATUS(h.put_kv(kAlignmentKey, {GgufType::kU32, GgufType::kU32, alignment}));

  std::vector<TensorPlacement> placements;
  placements.reserve(tensors_.size());
  std::set<std::string> names;
  uint64_t data_size = 0;
  for (const auto& spec : tensors_) {
    if (!names.insert(spec.name).second)
      return Error::data(path + ": duplicate tensor name " + quote_name(spec.name));
    MX_ASSIGN_OR_RETURN(TensorPlacement pl, place_tensor(path, spec, data_size));
    if (pl.nbytes > kMaxDataBytes - data_size)
      return Error::data(path + ": tensor " + quote_name(spec.name) +
                         " makes the file larger than 2^62 bytes");
    data_size = align_up(data_size + pl.nbytes, alignment);
    h.put_string(spec.name);
    h.put<uint32_t>(static_cast<uint32_t>(pl.ne.size()));
    for (int64_t ne : pl.ne) h.put<uint64_t>(static_cast<uint64_t>(ne));
    h.put<uint32_t>(static_cast<uint32_t>(spec.dtype));
    h.put<uint64_t>(pl.offset);
    placements.push_back(std::move(pl));
  }
  const uint64_t data_start = align_up(h.bytes().size(), alignment);

  return write_file_in_place(path, data_start + data_size, [&](uint8_t* dst) {
    std::memcpy(dst, h.bytes().data(), h.bytes().size());
    for (size_t i = 0; i < tensors_.size(); ++i)
      tensors_[i].fill(dst + data_start + placements[i].offset, placements[i].nbytes);
  });
}

}  // namespace mixtral
