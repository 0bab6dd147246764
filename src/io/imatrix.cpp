#include "io/imatrix.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>

#include "io/gguf.h"
#include "io/mapped_file.h"
#include "io/quote.h"

namespace mixtral {
namespace {

constexpr const char* kInSum2 = ".in_sum2";
constexpr const char* kCounts = ".counts";
constexpr const char* kKeyType = "general.type";
constexpr const char* kKeyDatasets = "imatrix.datasets";
constexpr const char* kKeyChunkCount = "imatrix.chunk_count";
constexpr const char* kKeyChunkSize = "imatrix.chunk_size";

bool strip_suffix(std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  if (s.size() <= n || s.compare(s.size() - n, n, suffix) != 0) return false;
  s.resize(s.size() - n);
  return true;
}

// A key that must be present, a whole number in [0, 2^32) (llama.cpp writes it as u32).
Result<int64_t> required_u32(const GgufFile& g, const std::string& name, const char* key) {
  MX_ASSIGN_OR_RETURN(std::optional<int64_t> v, g.get_int(key));
  if (!v) return Error::data(name + ": key " + quote_name(key) + " is missing (not an imatrix file?)");
  if (*v < 0 || *v > std::numeric_limits<uint32_t>::max())
    return Error::data(name + ": key " + quote_name(key) + " value " + std::to_string(*v) +
                       " is out of range");
  return *v;
}

Result<Imatrix> from_gguf(const GgufFile& g, const std::string& name) {
  Imatrix im;
  MX_ASSIGN_OR_RETURN(std::optional<std::string> type, g.get_string(kKeyType));
  if (type && *type != "imatrix")
    return Error::data(name + ": key " + quote_name(kKeyType) + " is " + quote_name(*type) +
                       ", not \"imatrix\" (a model, not an importance matrix?)");
  MX_ASSIGN_OR_RETURN(std::optional<std::vector<std::string>> datasets, g.get_string_array(kKeyDatasets));
  if (!datasets)
    return Error::data(name + ": key " + quote_name(kKeyDatasets) + " is missing (not an imatrix file?)");
  im.datasets = std::move(*datasets);
  MX_ASSIGN_OR_RETURN(im.chunk_count, required_u32(g, name, kKeyChunkCount));
  MX_ASSIGN_OR_RETURN(im.chunk_size, required_u32(g, name, kKeyChunkSize));

  struct Pair {
    const GgufTensorInfo* sums = nullptr;
    const GgufTensorInfo* counts = nullptr;
  };
  std::map<std::string, Pair> pairs;
  for (const GgufTensorInfo& t : g.tensors()) {
    std::string base = t.name;
    if (strip_suffix(base, kInSum2)) {
      pairs[base].sums = &t;
    } else if (strip_suffix(base, kCounts)) {
      pairs[base].counts = &t;
    }
  }
  if (pairs.empty()) return Error::data(name + ": no imatrix entries (tensors NAME.in_sum2 and NAME.counts)");
  for (const auto& [base, p] : pairs) {
    const std::string what = name + ": entry " + quote_name(base) + ": ";
    if (!p.sums) return Error::data(what + "has " + kCounts + " but no " + kInSum2 + " tensor");
    if (!p.counts) return Error::data(what + "has " + kInSum2 + " but no " + kCounts + " tensor");
    for (const GgufTensorInfo* t : {p.sums, p.counts})
      if (t->dtype != DType::F32)
        return Error::data(what + "tensor " + quote_name(t->name) + " is not F32 (type id " +
                           std::to_string(t->ggml_type) + ")");
    const auto elements = [](const GgufTensorInfo& t) {
      int64_t n = 1;
      for (int64_t d : t.ne) n *= d;  // the reader checked the sizes against the file
      return n;
    };
    const int64_t nval = elements(*p.sums), nmat = elements(*p.counts);
    if (nmat < 1 || nval < 1 || nval % nmat != 0)
      return Error::data(what + std::to_string(nval) + " sums do not split into " + std::to_string(nmat) +
                         " matrices (one count each)");
    // llama.cpp writes in_sum2 [cols, n_mat] and counts [1, n_mat]: any other split of the same elements
    // would be read as something else.
    if (p.sums->ne.size() >= 2 && p.sums->ne[1] != nmat)
      return Error::data(what + quote_name(p.sums->name) + " has " + std::to_string(p.sums->ne[1]) +
                         " rows for " + std::to_string(nmat) + " counts");
    ImatrixEntry e;
    e.sums.resize(static_cast<size_t>(nval));
    std::memcpy(e.sums.data(), p.sums->data, sizeof(float) * e.sums.size());
    for (size_t i = 0; i < e.sums.size(); ++i)
      if (!std::isfinite(e.sums[i]) || e.sums[i] < 0)
        return Error::data(what + "sum " + std::to_string(i) + " is " + std::to_string(e.sums[i]) +
                           " (sums of squares are finite and >= 0)");
    std::vector<float> c(static_cast<size_t>(nmat));
    std::memcpy(c.data(), p.counts->data, sizeof(float) * c.size());
    e.counts.resize(c.size());
    for (size_t i = 0; i < c.size(); ++i) {
      if (!(c[i] >= 0 && c[i] <= 9.0e15f && c[i] == std::floor(c[i])))
        return Error::data(what + "count " + std::to_string(i) + " is " + std::to_string(c[i]) +
                           " (token counts are whole numbers >= 0)");
      e.counts[i] = static_cast<int64_t>(c[i]);
    }
    im.entries.emplace(base, std::move(e));
  }
  return im;
}

// Little-endian reads from the .dat's bytes; every error names the file, the entry and the field.
class DatReader {
 public:
  DatReader(const uint8_t* p, size_t n, const std::string& name) : p_(p), n_(n), name_(name) {}
  size_t left() const { return n_ - pos_; }
  Result<int32_t> i32(const std::string& field) {
    if (left() < 4) return Error::data(name_ + ": " + field + ": the file ends (truncated)");
    int32_t v;
    std::memcpy(&v, p_ + pos_, 4);
    pos_ += 4;
    return v;
  }
  Result<std::string> bytes(int32_t len, const std::string& field) {
    if (len < 0 || static_cast<size_t>(len) > left())
      return Error::data(name_ + ": " + field + ": length " + std::to_string(len) +
                         " runs past the end of the file");
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }
  Result<std::vector<float>> floats(int32_t n, const std::string& field) {
    if (n < 0 || static_cast<size_t>(n) > left() / 4)
      return Error::data(name_ + ": " + field + ": " + std::to_string(n) +
                         " values run past the end of the file (truncated)");
    std::vector<float> v(static_cast<size_t>(n));
    std::memcpy(v.data(), p_ + pos_, 4 * v.size());
    pos_ += 4 * v.size();
    return v;
  }

 private:
  const uint8_t* p_;
  size_t n_, pos_ = 0;
  const std::string& name_;
};

Result<Imatrix> from_dat(const uint8_t* data, size_t size, const std::string& name) {
  DatReader r(data, size, name);
  Imatrix im;
  im.legacy = true;
  MX_ASSIGN_OR_RETURN(int32_t n_entries, r.i32("entry count"));
  // Each entry takes at least 16 bytes (length, name, ncall, nval, a value).
  if (n_entries < 1 || static_cast<size_t>(n_entries) > r.left() / 16)
    return Error::data(name + ": entry count " + std::to_string(n_entries) +
                       " is not between 1 and what the file holds (not an imatrix file?)");
  for (int32_t i = 0; i < n_entries; ++i) {
    const std::string at = "entry " + std::to_string(i);
    MX_ASSIGN_OR_RETURN(int32_t len, r.i32(at + " name length"));
    if (len < 1) return Error::data(name + ": " + at + ": name length " + std::to_string(len));
    MX_ASSIGN_OR_RETURN(std::string key, r.bytes(len, at + " name"));
    if (key.find('\0') != std::string::npos)
      return Error::data(name + ": " + at + ": the name holds a NUL byte");
    const std::string what = name + ": entry " + quote_name(key) + ": ";
    MX_ASSIGN_OR_RETURN(int32_t ncall, r.i32("entry " + quote_name(key) + " ncall"));
    if (ncall < 0) return Error::data(what + "ncall " + std::to_string(ncall) + " is negative");
    MX_ASSIGN_OR_RETURN(int32_t nval, r.i32("entry " + quote_name(key) + " value count"));
    if (nval < 1) return Error::data(what + "value count " + std::to_string(nval) + " (at least 1)");
    ImatrixEntry e;
    MX_ASSIGN_OR_RETURN(e.sums, r.floats(nval, "entry " + quote_name(key) + " values"));
    for (size_t j = 0; j < e.sums.size(); ++j)
      if (!std::isfinite(e.sums[j]) || e.sums[j] < 0)
        return Error::data(what + "value " + std::to_string(j) + " is " + std::to_string(e.sums[j]) +
                           " (mean squares are finite and >= 0)");
    e.counts = {ncall};
    if (!im.entries.emplace(key, std::move(e)).second) return Error::data(what + "appears twice");
  }
  // The optional trailer: the chunk count, then the dataset's name.
  if (r.left() > 0) {
    MX_ASSIGN_OR_RETURN(int32_t chunks, r.i32("chunk count"));
    if (chunks < 0) return Error::data(name + ": chunk count " + std::to_string(chunks) + " is negative");
    im.chunk_count = chunks;
    if (r.left() > 0) {
      MX_ASSIGN_OR_RETURN(int32_t len, r.i32("dataset name length"));
      MX_ASSIGN_OR_RETURN(std::string dataset, r.bytes(len, "dataset name"));
      if (!dataset.empty()) im.datasets.push_back(std::move(dataset));
    }
    if (r.left() > 0)
      return Error::data(name + ": " + std::to_string(r.left()) + " bytes after the dataset name");
  }
  return im;
}

Status check_for_writing(const Imatrix& im, const std::string& path) {
  if (im.entries.empty()) return Error::usage(path + ": no imatrix entries to write");
  for (const auto& [key, e] : im.entries) {
    if (key.empty()) return Error::usage(path + ": an entry has an empty name");
    if (e.counts.empty() || e.sums.empty() || e.sums.size() % e.counts.size() != 0)
      return Error::usage(path + ": entry " + quote_name(key) + ": " + std::to_string(e.sums.size()) +
                          " sums for " + std::to_string(e.counts.size()) + " counts");
  }
  return {};
}

}  // namespace

Result<Imatrix> parse_imatrix(const uint8_t* data, size_t size, const std::string& name) {
  if (size >= 4 && std::memcmp(data, "GGUF", 4) == 0) {
    MX_ASSIGN_OR_RETURN(GgufFile g, GgufFile::parse(data, size, name));
    return from_gguf(g, name);
  }
  return from_dat(data, size, name);
}

Result<Imatrix> read_imatrix(const std::string& path) {
  MX_ASSIGN_OR_RETURN(MappedFile f, MappedFile::open(path));
  if (f.size() >= 4 && std::memcmp(f.data(), "GGUF", 4) == 0) {
    MX_ASSIGN_OR_RETURN(GgufFile g, GgufFile::open(path));
    return from_gguf(g, path);
  }
  return from_dat(f.data(), f.size(), path);
}

Status write_imatrix_gguf(const Imatrix& im, const std::string& path) {
  MX_TRY_STATUS(check_for_writing(im, path));
  GgufWriter w;
  w.set_string(kKeyType, "imatrix");
  w.set_string_array(kKeyDatasets, im.datasets);
  for (const auto& [key, v] : {std::pair{kKeyChunkCount, im.chunk_count}, {kKeyChunkSize, im.chunk_size}}) {
    if (v < 0 || v > std::numeric_limits<uint32_t>::max())
      return Error::usage(path + ": " + key + " " + std::to_string(v) + " does not fit in u32");
    w.set_u32(key, static_cast<uint32_t>(v));
  }
  for (const auto& [key, e] : im.entries) {
    const auto nmat = static_cast<int64_t>(e.counts.size());
    const int64_t cols = static_cast<int64_t>(e.sums.size()) / nmat;
    const ImatrixEntry* ep = &e;
    w.add_tensor({key + kInSum2, DType::F32, {nmat, cols}, [ep](uint8_t* dst, size_t n) {
                    std::memcpy(dst, ep->sums.data(), n);
                  }});
    w.add_tensor({key + kCounts, DType::F32, {nmat, 1}, [ep](uint8_t* dst, size_t) {
                    for (size_t i = 0; i < ep->counts.size(); ++i) {
                      const auto c = static_cast<float>(ep->counts[i]);
                      std::memcpy(dst + 4 * i, &c, 4);
                    }
                  }});
  }
  return w.write(path);
}

Status write_imatrix_dat(const Imatrix& im, const std::string& path) {
  MX_TRY_STATUS(check_for_writing(im, path));
  std::vector<uint8_t> out;
  const auto put_i32 = [&out](int64_t v) {
    const auto x = static_cast<int32_t>(v);
    const auto* b = reinterpret_cast<const uint8_t*>(&x);
    out.insert(out.end(), b, b + 4);
  };
  const auto fits = [](int64_t v) { return v >= 0 && v <= std::numeric_limits<int32_t>::max(); };
  if (!fits(static_cast<int64_t>(im.entries.size())) || !fits(im.chunk_count))
    return Error::usage(path + ": entry or chunk count does not fit in i32");
  put_i32(static_cast<int64_t>(im.entries.size()));
  for (const auto& [key, e] : im.entries) {
    const std::string what = path + ": entry " + quote_name(key) + ": ";
    if (!fits(static_cast<int64_t>(key.size())) || !fits(static_cast<int64_t>(e.sums.size())))
      return Error::usage(what + "too large for the .dat format");
    std::vector<float> values = e.sums;
    int64_t ncall = e.counts[0];
    if (!im.legacy) {
      if (im.chunk_size <= 0) return Error::usage(path + ": chunk size " + std::to_string(im.chunk_size));
      const int64_t max_count = *std::max_element(e.counts.begin(), e.counts.end());
      ncall = (max_count + im.chunk_size - 1) / im.chunk_size;
      const size_t cols = e.sums.size() / e.counts.size();
      for (size_t i = 0; i < values.size(); ++i) {
        const auto count = static_cast<double>(e.counts[i / cols]);
        values[i] = count == 0 ? static_cast<float>(ncall)
                               : static_cast<float>(e.sums[i] / count * static_cast<double>(ncall));
      }
    }
    if (!fits(ncall)) return Error::usage(what + "ncall " + std::to_string(ncall) + " does not fit in i32");
    put_i32(static_cast<int64_t>(key.size()));
    out.insert(out.end(), key.begin(), key.end());
    put_i32(ncall);
    put_i32(static_cast<int64_t>(values.size()));
    const auto* b = reinterpret_cast<const uint8_t*>(values.data());
    out.insert(out.end(), b, b + 4 * values.size());
  }
  put_i32(im.chunk_count);
  const std::string dataset = im.datasets.empty() ? std::string() : im.datasets.back();
  if (!fits(static_cast<int64_t>(dataset.size()))) return Error::usage(path + ": dataset name too long");
  put_i32(static_cast<int64_t>(dataset.size()));
  out.insert(out.end(), dataset.begin(), dataset.end());

  const std::string tmp = path + ".tmp";
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(tmp.c_str(), "wb"), &std::fclose);
  if (!f) return Error::io(path + ": cannot create " + tmp);
  const bool ok = std::fwrite(out.data(), 1, out.size(), f.get()) == out.size();
  if (std::fclose(f.release()) != 0 || !ok) {
    std::remove(tmp.c_str());
    return Error::io(path + ": write error");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return Error::io(path + ": cannot rename " + tmp + " to it");
  }
  return {};
}

std::vector<float> imatrix_weights(const Imatrix& im, const ImatrixEntry& e) {
  std::vector<float> w(e.sums.size());
  if (im.legacy) {
    const int64_t ncall = e.counts.empty() ? 0 : e.counts[0];
    for (size_t i = 0; i < w.size(); ++i)
      w[i] = ncall > 0 ? e.sums[i] / static_cast<float>(ncall) : e.sums[i];
    return w;
  }
  const size_t cols = e.counts.empty() ? 0 : e.sums.size() / e.counts.size();
  for (size_t i = 0; i < w.size(); ++i) {
    const int64_t count = e.counts[i / cols];
    w[i] = count > 0 ? e.sums[i] / static_cast<float>(count) : 1.0f;
  }
  return w;
}

}  // namespace mixtral
