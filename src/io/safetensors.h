// safetensors reader and writer: u64 little-endian header length, a JSON header mapping tensor
// names to {dtype, shape, data_offsets: [begin, end]} (offsets relative to the byte after the
// header) plus an optional "__metadata__" object of strings, then the raw data.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/result.h"
#include "io/mapped_file.h"
#include "tensor/tensor.h"

namespace mixtral {

struct SafetensorsTensor {
  std::string name;
  std::string dtype_name;      // as written: "F32", "F16", "BF16", ...
  DType dtype = DType::F32;    // F32, F16 or BF16 (others are refused when parsed)
  std::vector<int64_t> shape;  // row-major
  const void* data = nullptr;
  size_t nbytes = 0;
  TensorView view() const;
};

class SafetensorsFile {
 public:
  // Maps and parses a file; every error names the file and the tensor. Accepted: a header below 100 MB
  // that is a JSON object; dtypes F32/F16/BF16; 0 to 4 dims, none 0; data_offsets matching the shape,
  // inside the data region and not overlapping (gaps are allowed). tensors() is in file (offset) order.
  static Result<SafetensorsFile> open(const std::string& path);
  static Result<SafetensorsFile> parse(const uint8_t* data, size_t size, const std::string& name);

  const std::string& path() const { return name_; }
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const SafetensorsTensor* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::shared_ptr<MappedFile> file_;
  std::string name_;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

struct SafetensorsTensorSpec {
  std::string name;
  DType dtype = DType::F32;  // F32, F16, BF16
  std::vector<int64_t> shape;
  std::function<void(uint8_t* dst, size_t nbytes)> fill;
};

// Writes `path` (through "<path>.tmp", renamed when complete). The header is padded with spaces to a
// multiple of 8 bytes and the data is packed back to back, larger element types first, so every tensor
// is aligned to its element size. An empty `metadata` omits "__metadata__".
Status write_safetensors(const std::string& path, const std::vector<SafetensorsTensorSpec>& tensors,
                         const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Reads a whole small text file (config.json, params.json, index files); at most 256 MiB.
Result<std::string> read_text_file(const std::string& path);

}  // namespace mixtral
