// GGUF (v2, v3) reader and writer. Format facts: magic "GGUF", little-endian, version u32,
// tensor count and kv count u64 (v2/v3), key/value metadata, tensor infos (name, n_dims,
// ne[] innermost first, ggml type, offset relative to the aligned data section), data aligned
// to general.alignment (default 32).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "core/result.h"
#include "io/mapped_file.h"
#include "tensor/tensor.h"

namespace mixtral {

enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

// One metadata value. Scalars: signed integers as int64, unsigned as uint64, f32/f64 as double.
// Arrays keep their element type: integer and bool elements (0/1) in vector<int64_t> (u64 elements
// above INT64_MAX are refused when parsing), floats in vector<double>, strings in vector<string>.
// Arrays of arrays are refused when parsing (as llama.cpp does) and cannot be written.
struct GgufValue {
  GgufType type = GgufType::kU32;
  GgufType array_type = GgufType::kU32;  // element type when type == kArray
  std::variant<int64_t, uint64_t, double, bool, std::string, std::vector<int64_t>, std::vector<double>,
               std::vector<std::string>>
      v;
};

struct GgufTensorInfo {
  std::string name;
  uint32_t ggml_type = 0;      // raw id as stored
  DType dtype = DType::F32;    // valid (known) type id
  std::vector<int64_t> ne;     // GGUF order: ne[0] innermost (columns)
  uint64_t offset = 0;         // relative to the data section
  const void* data = nullptr;  // into the mapping
  size_t nbytes = 0;
  TensorView view() const;  // shape reversed to row-major
};

class GgufFile {
 public:
  // Maps and parses a file; every error names the file and the key or tensor. Accepted: versions 2
  // and 3; 0 to 4 dims, each > 0; every type id dtype_traits() knows, whether or not this build computes
  // with it (the model loader decides); ne[0] a multiple of the block size; offsets aligned; tensor data
  // inside the file and not overlapping. tensors() keeps the file's order.
  static Result<GgufFile> open(const std::string& path);
  // Parses bytes already in memory (used by the fuzzer); `name` is used in messages.
  // The bytes must outlive the returned object.
  static Result<GgufFile> parse(const uint8_t* data, size_t size, const std::string& name);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& path() const { return name_; }
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  // Drops this process's mapping of tensor bytes [p, p + n) copied elsewhere (MappedFile::release); a
  // no-op for bytes given to parse().
  void release(const void* p, size_t n) const;

  // Typed metadata lookups: nullopt when absent; an Error naming file and key when present with a
  // wrong type. get_int takes any integer type (u64 above INT64_MAX is an error); get_float takes
  // f32/f64 and integers; get_int_array takes integer arrays (not bool); get_float_array takes float and
  // integer arrays.
  Result<std::optional<int64_t>> get_int(const std::string& key) const;
  Result<std::optional<double>> get_float(const std::string& key) const;
  Result<std::optional<std::string>> get_string(const std::string& key) const;
  Result<std::optional<bool>> get_bool(const std::string& key) const;
  Result<std::optional<std::vector<std::string>>> get_string_array(const std::string& key) const;
  Result<std::optional<std::vector<double>>> get_float_array(const std::string& key) const;
  Result<std::optional<std::vector<int64_t>>> get_int_array(const std::string& key) const;

 private:
  static Result<GgufFile> parse_bytes(const uint8_t* data, size_t size, const std::string& name);

  std::shared_ptr<MappedFile> file_;  // keeps the mapping alive for views
  std::string name_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> index_;
};

// Streaming writer: metadata and tensor infos first, then each tensor's bytes are produced in
// place in a memory-mapped output file by its `fill` callback.
struct GgufTensorSpec {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // row-major, outermost first (written reversed as ne)
  std::function<void(uint8_t* dst, size_t nbytes)> fill;
};

class GgufWriter {
 public:
  // Keys are written in the order first set; setting a key again replaces its value in place.
  void set(const std::string& key, GgufValue value);
  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_f32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_string(const std::string& key, const std::string& v);
  void set_string_array(const std::string& key, const std::vector<std::string>& v);
  void set_f32_array(const std::string& key, const std::vector<float>& v);
  void set_i32_array(const std::string& key, const std::vector<int32_t>& v);
  void add_tensor(GgufTensorSpec spec);
  // Writes `path` (through "<path>.tmp", renamed when complete): header, tensor infos and data in
  // add_tensor order, each tensor at an aligned offset. A non-default alignment is recorded as
  // general.alignment. Specs and values are validated first; errors name the file and tensor or key.
  Status write(const std::string& path, uint32_t version = 3, uint64_t alignment = 32) const;

 private:
  std::vector<std::pair<std::string, GgufValue>> kv_;  // in insertion order
  std::vector<GgufTensorSpec> tensors_;
};

}  // namespace mixtral
