// Helpers for the io tests: a scratch directory, little-endian byte builders for hand-made
// (often deliberately broken) files, and error-message matchers.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.h"

namespace mixtral::testing {

// A fresh directory under gtest's temp dir, removed with its contents at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = ::testing::TempDir() + "mixtral_io_XXXXXX";
    const char* d = ::mkdtemp(tmpl.data());
    EXPECT_NE(d, nullptr);
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Appends little-endian fields.
struct Bytes {
  std::vector<uint8_t> b;

  Bytes& raw(const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
    return *this;
  }
  template <class T>
  Bytes& put(T v) {
    return raw(&v, sizeof v);
  }
  Bytes& u8(uint8_t v) { return put(v); }
  Bytes& u32(uint32_t v) { return put(v); }
  Bytes& u64(uint64_t v) { return put(v); }
  Bytes& f32(float v) { return put(v); }
  Bytes& str(std::string_view s) {
    u64(s.size());
    return raw(s.data(), s.size());
  }
  Bytes& text(std::string_view s) { return raw(s.data(), s.size()); }
  Bytes& zeros(size_t n) {
    b.resize(b.size() + n, 0);
    return *this;
  }
  Bytes& pad_to(size_t align) { return zeros((align - b.size() % align) % align); }
  size_t size() const { return b.size(); }
};

// Asserts that r failed and that its message contains every one of `parts`.
template <class R>
::testing::AssertionResult FailsWith(const R& r, std::initializer_list<std::string_view> parts) {
  if (r.ok()) return ::testing::AssertionFailure() << "expected an error, got success";
  const std::string& m = r.error().message;
  for (auto p : parts)
    if (m.find(p) == std::string::npos)
      return ::testing::AssertionFailure() << "message \"" << m << "\" lacks \"" << p << "\"";
  if (m.find('\n') != std::string::npos) return ::testing::AssertionFailure() << "multi-line message: " << m;
  return ::testing::AssertionSuccess();
}

// Deterministic filler: byte i of a tensor is a function of i and the tensor's seed.
inline void fill_pattern(uint8_t* dst, size_t n, uint32_t seed) {
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    dst[i] = static_cast<uint8_t>(x);
  }
}

}  // namespace mixtral::testing
