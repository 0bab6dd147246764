#include "io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cctype>
#include <cstring>
#include <limits>
#include <new>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "io/quote.h"

namespace mixtral {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr size_t kMaxDims = 4;
constexpr size_t kMaxTextBytes = size_t{256} << 20;
const char* const kMetadataKey = "__metadata__";

std::optional<DType> dtype_from_safetensors(const std::string& s) {
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  return std::nullopt;
}

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    default:
      return nullptr;
  }
}

// A dtype string as written when it is plain (e.g. I64), quoted and escaped otherwise.
std::string dtype_for_message(const std::string& s) {
  const bool plain = !s.empty() && s.size() <= 16 && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c));
  });
  return plain ? s : quote_name(s);
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// nlohmann's messages quote the input they stopped at; keep them to one printable line.
std::string one_line(const char* what) {
  std::string s;
  for (const char* p = what; *p && s.size() < 200; ++p) {
    const auto c = static_cast<unsigned char>(*p);
    s += c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?';
  }
  return s;
}

// Reads an unsigned JSON integer that fits in int64.
std::optional<int64_t> as_index(const json& v) {
  if (!v.is_number_unsigned()) return std::nullopt;
  const auto u = v.get<uint64_t>();
  if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return static_cast<int64_t>(u);
}

struct Placed {
  SafetensorsTensor tensor;
  uint64_t begin = 0;  // relative to the data region
};

// One header entry: {"dtype": "F32", "shape": [rows, cols], "data_offsets": [begin, end]}.
Result<Placed> parse_entry(const std::string& file, const std::string& name, const json& e, uint64_t region) {
  const std::string where = file + ": tensor " + quote_name(name);
  if (!e.is_object()) return Error::data(where + ": header entry is not an object");
  const auto dt = e.find("dtype");
  if (dt == e.end() || !dt->is_string()) return Error::data(where + ": missing or non-string \"dtype\"");
  Placed p;
  SafetensorsTensor& t = p.tensor;
  t.name = name;
  t.dtype_name = dt->get<std::string>();
  const auto dtype = dtype_from_safetensors(t.dtype_name);
  if (!dtype)
    return Error::data(where + " has dtype " + dtype_for_message(t.dtype_name) +
                       ", only F32/F16/BF16 are supported");
  t.dtype = *dtype;

  const auto sh = e.find("shape");
  if (sh == e.end() || !sh->is_array()) return Error::data(where + ": missing or non-array \"shape\"");
  if (sh->size() > kMaxDims)
    return Error::data(where + " has " + std::to_string(sh->size()) + " dimensions, at most 4 are supported");
  uint64_t numel = 1;
  for (const json& d : *sh) {
    if (d.is_number_integer() && !d.is_number_unsigned())
      return Error::data(where + ": negative dimension " + std::to_string(d.get<int64_t>()) +
                         " in \"shape\"");
    const auto dim = as_index(d);
    if (!dim) return Error::data(where + ": \"shape\" holds a value that is not a valid dimension");
    t.shape.push_back(*dim);
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(*dim), &numel))
      return Error::data(where + ": shape " + shape_text(t.shape) + " overflows");
  }
  if (numel == 0)
    return Error::data(where + ": shape " + shape_text(t.shape) +
                       " is empty; empty tensors are not supported");

  const auto off = e.find("data_offsets");
  if (off == e.end() || !off->is_array() || off->size() != 2)
    return Error::data(where + ": \"data_offsets\" must be an array of two offsets");
  const auto begin = as_index((*off)[0]);
  const auto end = as_index((*off)[1]);
  if (!begin || !end)
    return Error::data(where + ": \"data_offsets\" holds a value that is not a valid offset");
  if (*begin > *end)
    return Error::data(where + ": data_offsets [" + std::to_string(*begin) + ", " + std::to_string(*end) +
                       "] end before they begin");
  if (static_cast<uint64_t>(*end) > region)
    return Error::data(where + " data [" + std::to_string(*begin) + ", " + std::to_string(*end) +
                       ") runs past the end of the data region (" + std::to_string(region) + " bytes)");
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, traits(t.dtype).block_bytes, &nbytes))
    return Error::data(where + ": shape " + shape_text(t.shape) + " of " + t.dtype_name + " is too large");
  if (nbytes != static_cast<uint64_t>(*end - *begin))
    return Error::data(where + ": shape " + shape_text(t.shape) + " of " + t.dtype_name + " needs " +
                       std::to_string(nbytes) + " bytes, data_offsets hold " + std::to_string(*end - *begin));
  t.nbytes = static_cast<size_t>(nbytes);
  p.begin = static_cast<uint64_t>(*begin);
  return p;
}

}  // namespace

TensorView SafetensorsTensor::view() const {
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.ndim = static_cast<int>(shape.size());
  for (int i = 0; i < v.ndim; ++i) v.shape[i] = shape[i];
  return v;
}

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  MX_ASSIGN_OR_RETURN(MappedFile m, MappedFile::open(path));
  auto file = std::make_shared<MappedFile>(std::move(m));
  MX_ASSIGN_OR_RETURN(SafetensorsFile f, parse(file->data(), file->size(), path));
  f.file_ = std::move(file);
  return f;
}

Result<SafetensorsFile> SafetensorsFile::parse(const uint8_t* data, size_t size, const std::string& name) {
  SafetensorsFile f;
  f.name_ = name;
  if (size < 8)
    return Error::data(name + ": " + std::to_string(size) + " bytes is too small for a safetensors file");
  uint64_t header_len = 0;
  std::memcpy(&header_len, data, 8);
  if (header_len >= kMaxHeaderBytes)
    return Error::data(name + ": header length " + std::to_string(header_len) +
                       " is not below 100 MB (not a safetensors file?)");
  if (header_len > size - 8)
    return Error::data(name + ": header length " + std::to_string(header_len) +
                       " runs past the end of the file (size " + std::to_string(size) + ")");
  const auto* text = reinterpret_cast<const char*>(data + 8);
  const uint64_t region = size - 8 - header_len;
  const uint8_t* base = data + 8 + header_len;

  std::vector<Placed> placed;
  try {
    const json header = json::parse(text, text + header_len);
    if (!header.is_object()) return Error::data(name + ": header is not a JSON object");
    for (const auto& [key, value] : header.items()) {
      if (key == kMetadataKey) {
        if (!value.is_object()) return Error::data(name + ": \"__metadata__\" is not an object");
        for (const auto& [mk, mv] : value.items()) {
          if (!mv.is_string())
            return Error::data(name + ": __metadata__ key " + quote_name(mk) + " is not a string");
          f.metadata_.emplace(mk, mv.get<std::string>());
        }
        continue;
      }
      MX_ASSIGN_OR_RETURN(Placed p, parse_entry(name, key, value, region));
      placed.push_back(std::move(p));
    }
  } catch (const json::exception& e) {
    return Error::data(name + ": header is not valid JSON: " + one_line(e.what()));
  } catch (const std::bad_alloc&) {
    return Error::data(name + ": out of memory while reading the header");
  }

  // File order; tensors may leave gaps but must not share bytes.
  std::sort(placed.begin(), placed.end(), [](const Placed& a, const Placed& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.tensor.name < b.tensor.name;
  });
  for (size_t i = 1; i < placed.size(); ++i) {
    if (placed[i - 1].begin + placed[i - 1].tensor.nbytes > placed[i].begin)
      return Error::data(name + ": tensors " + quote_name(placed[i - 1].tensor.name) + " and " +
                         quote_name(placed[i].tensor.name) + " overlap");
  }
  for (size_t i = 0; i < placed.size(); ++i) {
    placed[i].tensor.data = base + placed[i].begin;
    f.index_.emplace(placed[i].tensor.name, i);
    f.tensors_.push_back(std::move(placed[i].tensor));
  }
  return f;
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Status write_safetensors(const std::string& path, const std::vector<SafetensorsTensorSpec>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  // Data in order of decreasing element size, so that with the header padded to 8 bytes every
  // tensor starts aligned to its element size.
  std::vector<const SafetensorsTensorSpec*> order;
  std::set<std::string> names;
  for (const auto& t : tensors) {
    const std::string where = path + ": tensor " + quote_name(t.name);
    if (t.name.empty() || t.name == kMetadataKey) return Error::data(where + ": invalid tensor name");
    if (!names.insert(t.name).second) return Error::data(where + ": duplicate tensor name");
    if (!safetensors_dtype_name(t.dtype)) return Error::data(where + ": only F32/F16/BF16 can be written");
    if (t.shape.size() > kMaxDims) return Error::data(where + ": more than 4 dimensions");
    if (!t.fill) return Error::usage(where + ": no fill callback");
    order.push_back(&t);
  }
  std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    return traits(a->dtype).block_bytes > traits(b->dtype).block_bytes;
  });

  json header = json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::vector<uint64_t> offsets;  // [order.size()] begin of each tensor in the data region
  uint64_t data_size = 0;
  for (const auto* t : order) {
    const std::string where = path + ": tensor " + quote_name(t->name);
    uint64_t nbytes = traits(t->dtype).block_bytes;
    for (int64_t d : t->shape) {
      if (d <= 0) return Error::data(where + ": dimension of size " + std::to_string(d));
      if (__builtin_mul_overflow(nbytes, static_cast<uint64_t>(d), &nbytes))
        return Error::data(where + ": byte size overflows");
    }
    if (nbytes > (uint64_t{1} << 62) - data_size)
      return Error::data(where + ": makes the file larger than 2^62 bytes");
    offsets.push_back(data_size);
    header[t->name] = {{"dtype", safetensors_dtype_name(t->dtype)},
                       {"shape", t->shape},
                       {"data_offsets", {data_size, data_size + nbytes}}};
    data_size += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    return Error::data(path + ": cannot write the header (names must be UTF-8): " + one_line(e.what()));
  }
  text.resize((text.size() + 7) / 8 * 8, ' ');
  const uint64_t header_len = text.size();

  return write_file_in_place(path, 8 + header_len + data_size, [&](uint8_t* dst) {
    std::memcpy(dst, &header_len, 8);
    std::memcpy(dst + 8, text.data(), text.size());
    uint8_t* data = dst + 8 + header_len;
    for (size_t i = 0; i < order.size(); ++i) {
      const uint64_t end = i + 1 < order.size() ? offsets[i + 1] : data_size;
      order[i]->fill(data + offsets[i], static_cast<size_t>(end - offsets[i]));
    }
  });
}

Result<std::string> read_text_file(const std::string& path) {
  MX_ASSIGN_OR_RETURN(MappedFile f, MappedFile::open(path));
  if (f.size() > kMaxTextBytes)
    return Error::data(path + ": " + std::to_string(f.size()) + " bytes is too large for a text file");
  return std::string(reinterpret_cast<const char*>(f.data()), f.size());
}

}  // namespace mixtral
