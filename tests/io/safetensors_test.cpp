#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "io_test_util.h"
#include "tensor/quant.h"

namespace mixtral {
namespace {

using testing::Bytes;
using testing::FailsWith;
using testing::ScratchDir;

SafetensorsTensorSpec pattern_spec(const std::string& name, DType dtype, std::vector<int64_t> shape,
                                   uint32_t seed, std::map<std::string, std::vector<uint8_t>>* written) {
  return {name, dtype, shape, [=](uint8_t* dst, size_t n) {
            testing::fill_pattern(dst, n, seed);
            (*written)[name] = std::vector<uint8_t>(dst, dst + n);
          }};
}

TEST(Safetensors, RoundTrip) {
  ScratchDir dir;
  const std::string path = dir.file("model.safetensors");
  std::map<std::string, std::vector<uint8_t>> written;
  std::vector<SafetensorsTensorSpec> specs = {
      pattern_spec("model.norm.weight", DType::BF16, {3}, 1, &written),
      pattern_spec("model.embed_tokens.weight", DType::F32, {5, 4}, 2, &written),
      pattern_spec("lm_head.weight", DType::F16, {7}, 3, &written),
      pattern_spec("router", DType::F32, {2, 1, 3}, 4, &written),
      pattern_spec("scalar", DType::F32, {}, 5, &written),
  };
  ASSERT_TRUE(write_safetensors(path, specs, {{"format", "pt"}, {"note", "a \"quoted\" value"}}).ok());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  const auto bytes = testing::read_bytes(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(bytes[8], '{');

  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ(f->path(), path);
  EXPECT_EQ(f->metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}, {"note", "a \"quoted\" value"}}));
  ASSERT_EQ(f->tensors().size(), specs.size());
  const auto* data_base = static_cast<const uint8_t*>(f->tensors()[0].data);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(data_base) % 8, 0u);
  for (const auto& spec : specs) {
    SCOPED_TRACE(spec.name);
    const SafetensorsTensor* t = f->find(spec.name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->dtype, spec.dtype);
    EXPECT_EQ(t->shape, spec.shape);
    ASSERT_EQ(t->nbytes, written[spec.name].size());
    EXPECT_EQ(std::memcmp(t->data, written[spec.name].data(), t->nbytes), 0);
    // Every tensor starts aligned to its element size.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data) % traits(t->dtype).block_bytes, 0u);
    const TensorView v = t->view();
    EXPECT_EQ(v.ndim, static_cast<int>(spec.shape.size()));
    for (int d = 0; d < v.ndim; ++d) EXPECT_EQ(v.shape[d], spec.shape[d]);
    EXPECT_EQ(v.nbytes(), t->nbytes);
    EXPECT_EQ(v.data, t->data);
  }
  EXPECT_EQ(f->find("scalar")->nbytes, 4u);
  EXPECT_EQ(f->find("model.norm.weight")->dtype_name, "BF16");
  EXPECT_EQ(f->find("lm_head.weight")->dtype_name, "F16");
  EXPECT_EQ(f->find("nope"), nullptr);
  // Tensors are listed in file order: the F32 ones (larger elements) were written first.
  EXPECT_EQ(f->tensors()[0].name, "model.embed_tokens.weight");
  EXPECT_EQ(f->tensors()[0].data, data_base);
  EXPECT_EQ(f->tensors().back().name, "lm_head.weight");
  // The data region is exactly the tensors, back to back (what the reference implementation requires).
  EXPECT_EQ(bytes.size(), 8 + header_len + (20 + 6 + 1) * 4 + (3 + 7) * 2);
}

TEST(Safetensors, ValuesSurviveBf16AndF16) {
  ScratchDir dir;
  const std::string path = dir.file("v.safetensors");
  const std::vector<float> src = {1.0f, -2.5f, 0.15625f, 65504.0f};
  std::vector<SafetensorsTensorSpec> specs = {
      {"h",
       DType::F16,
       {4},
       [&](uint8_t* d, size_t n) { quantize_row(DType::F16, src.data(), d, 4), (void)n; }},
      {"b", DType::BF16, {2, 2}, [&](uint8_t* d, size_t) { quantize_row(DType::BF16, src.data(), d, 4); }},
  };
  ASSERT_TRUE(write_safetensors(path, specs, {}).ok());
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_TRUE(f->metadata().empty());
  std::vector<float> back(4);
  dequantize_row(DType::F16, f->find("h")->data, back.data(), 4);
  EXPECT_EQ(back, src);
  dequantize_row(DType::BF16, f->find("b")->data, back.data(), 4);
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_EQ(back[1], -2.5f);
  EXPECT_EQ(back[2], 0.15625f);
  EXPECT_EQ(back[3], 65536.0f);  // bf16 rounds 65504 up
}

TEST(Safetensors, WriterRefusesBadSpecs) {
  ScratchDir dir;
  const std::string path = dir.file("bad.safetensors");
  auto fill = [](uint8_t*, size_t) {};
  EXPECT_TRUE(FailsWith(write_safetensors(path, {{"q", DType::Q8_0, {32}, fill}}),
                        {path + ": tensor 'q': only F32/F16/BF16 can be written"}));
  EXPECT_TRUE(FailsWith(write_safetensors(path, {{"a", DType::F32, {1}, fill}, {"a", DType::F32, {1}, fill}}),
                        {path, "tensor 'a': duplicate tensor name"}));
  EXPECT_TRUE(FailsWith(write_safetensors(path, {{"__metadata__", DType::F32, {1}, fill}}),
                        {path, "invalid tensor name"}));
  EXPECT_TRUE(FailsWith(write_safetensors(path, {{"z", DType::F32, {2, 0}, fill}}),
                        {path, "tensor 'z': dimension of size 0"}));
  EXPECT_TRUE(
      FailsWith(write_safetensors(path, {{"n", DType::F32, {1}, nullptr}}), {path, "no fill callback"}));
  EXPECT_TRUE(
      FailsWith(write_safetensors(path, {{"big", DType::F32, {int64_t{1} << 40, int64_t{1} << 40}, fill}}),
                {path, "tensor 'big'", "overflows"}));
  EXPECT_TRUE(FailsWith(write_safetensors(path, {{"bad\xff", DType::F32, {1}, fill}}), {path, "UTF-8"}));
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

// A file with the given JSON header (unpadded) and `data_bytes` zero bytes of data.
Bytes file_with_header(const std::string& json, size_t data_bytes) {
  Bytes b;
  b.u64(json.size()).text(json).zeros(data_bytes);
  return b;
}

Result<SafetensorsFile> parse(const Bytes& b) {
  return SafetensorsFile::parse(b.b.data(), b.size(), "x.safetensors");
}

Result<SafetensorsFile> parse_header(const std::string& json, size_t data_bytes = 64) {
  return parse(file_with_header(json, data_bytes));
}

TEST(Safetensors, ParsesHandWrittenHeader) {
  auto f =
      parse_header(R"({"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],)"
                   R"("data_offsets":[0,8]},"__metadata__":{"format":"pt"}}   )",
                   16);
  ASSERT_TRUE(f.ok()) << f.error().message;
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->tensors()[0].name, "a");
  EXPECT_EQ(f->tensors()[1].name, "b");
  EXPECT_EQ(f->find("b")->nbytes, 4u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  // Gaps between tensors are allowed.
  EXPECT_TRUE(parse_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 16).ok());
  EXPECT_TRUE(parse_header("{}", 0).ok());
}

TEST(Safetensors, RefusesBadFraming) {
  ScratchDir dir;
  EXPECT_TRUE(FailsWith(SafetensorsFile::open(dir.file("m.safetensors")),
                        {dir.file("m.safetensors") + ": cannot open: No such file or directory"}));
  testing::write_bytes(dir.file("e.safetensors"), {});
  EXPECT_TRUE(FailsWith(SafetensorsFile::open(dir.file("e.safetensors")),
                        {dir.file("e.safetensors") + ": 0 bytes is too small for a safetensors file"}));
  Bytes small;
  small.u32(2);
  EXPECT_TRUE(FailsWith(parse(small), {"x.safetensors: 4 bytes is too small"}));
  Bytes huge;
  huge.u64(100'000'000).zeros(16);
  EXPECT_TRUE(FailsWith(parse(huge), {"x.safetensors: header length 100000000 is not below 100 MB"}));
  Bytes past;
  past.u64(50).text("{}");
  EXPECT_TRUE(
      FailsWith(parse(past), {"x.safetensors: header length 50 runs past the end of the file (size 10)"}));
}

TEST(Safetensors, RefusesBadJson) {
  EXPECT_TRUE(FailsWith(parse_header("{\"a\": "), {"x.safetensors: header is not valid JSON"}));
  EXPECT_TRUE(FailsWith(parse_header("{\"a\": \x01\n}"), {"x.safetensors: header is not valid JSON"}));
  EXPECT_TRUE(FailsWith(parse_header(""), {"x.safetensors: header is not valid JSON"}));
  EXPECT_TRUE(FailsWith(parse_header("[1, 2]"), {"x.safetensors: header is not a JSON object"}));
  EXPECT_TRUE(
      FailsWith(parse_header(R"({"a": 3})"), {"x.safetensors: tensor 'a': header entry is not an object"}));
  EXPECT_TRUE(FailsWith(parse_header(R"({"__metadata__": []})"),
                        {"x.safetensors: \"__metadata__\" is not an object"}));
  EXPECT_TRUE(FailsWith(parse_header(R"({"__metadata__": {"k": 1}})"),
                        {"x.safetensors: __metadata__ key 'k' is not a string"}));
}

TEST(Safetensors, RefusesBadEntries) {
  auto entry = [](const std::string& body) { return parse_header("{\"w\": {" + body + "}}"); };
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"I64","shape":[2],"data_offsets":[0,16])"),
                        {"x.safetensors: tensor 'w' has dtype I64, only F32/F16/BF16 are supported"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2])"),
                        {"x.safetensors: tensor 'w' has dtype 'F8_E4M3', only F32/F16/BF16 are supported"}));
  EXPECT_TRUE(
      FailsWith(entry(R"("shape":[2],"data_offsets":[0,8])"), {"x.safetensors: tensor 'w'", "dtype"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":5,"shape":[2],"data_offsets":[0,8])"), {"tensor 'w'", "dtype"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F32","data_offsets":[0,8])"), {"tensor 'w'", "\"shape\""}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F32","shape":[2,-3],"data_offsets":[0,8])"),
                        {"x.safetensors: tensor 'w': negative dimension -3"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F32","shape":[2.5],"data_offsets":[0,8])"),
                        {"tensor 'w'", "not a valid dimension"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F32","shape":["2"],"data_offsets":[0,8])"),
                        {"tensor 'w'", "not a valid dimension"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F32","shape":[1,1,1,1,1],"data_offsets":[0,4])"),
                        {"tensor 'w' has 5 dimensions, at most 4"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F32","shape":[4,0],"data_offsets":[0,0])"),
                        {"tensor 'w': shape [4, 0] is empty"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8])"),
                        {"tensor 'w': shape [4294967296, 4294967296] overflows"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8])"),
                        {"tensor 'w': shape [4611686018427387904] of F32 is too large"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8])"),
                        {"tensor 'w'", "not a valid dimension"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F32","shape":[2])"), {"tensor 'w'", "data_offsets"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F32","shape":[2],"data_offsets":[0])"),
                        {"tensor 'w': \"data_offsets\" must be an array of two offsets"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F32","shape":[2],"data_offsets":[0,-8])"),
                        {"tensor 'w'", "not a valid offset"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F32","shape":[2],"data_offsets":[16,8])"),
                        {"tensor 'w': data_offsets [16, 8] end before they begin"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F32","shape":[2],"data_offsets":[60,68])"),
                        {"tensor 'w' data [60, 68) runs past the end of the data region (64 bytes)"}));
  EXPECT_TRUE(FailsWith(entry(R"("dtype":"F32","shape":[3],"data_offsets":[0,8])"),
                        {"tensor 'w': shape [3] of F32 needs 12 bytes, data_offsets hold 8"}));
  EXPECT_TRUE(FailsWith(parse_header(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})"),
                        {"x.safetensors: tensors 'a' and 'b' overlap"}));
  EXPECT_TRUE(FailsWith(parse_header("{\"bad\\nname\": 1}"), {"tensor 'bad\\x0aname'"}));
}

std::vector<uint8_t> small_valid_file(const ScratchDir& dir) {
  const std::string path = dir.file("small.safetensors");
  std::vector<SafetensorsTensorSpec> specs = {
      {"a", DType::F32, {2, 3}, [](uint8_t* d, size_t n) { testing::fill_pattern(d, n, 1); }},
      {"b", DType::BF16, {5}, [](uint8_t* d, size_t n) { testing::fill_pattern(d, n, 2); }},
  };
  EXPECT_TRUE(write_safetensors(path, specs).ok());
  return testing::read_bytes(path);
}

// Every prefix either fails with a one-line error naming the file or (only when complete) parses;
// parsed from a heap buffer of exactly that size so sanitizer builds catch over-reads.
TEST(Safetensors, TruncationSweep) {
  ScratchDir dir;
  const auto full = small_valid_file(dir);
  for (size_t n = 0; n <= full.size(); ++n) {
    std::vector<uint8_t> prefix(full.begin(), full.begin() + static_cast<ptrdiff_t>(n));
    auto r = SafetensorsFile::parse(prefix.data(), prefix.size(), "s.safetensors");
    if (n == full.size()) {
      EXPECT_TRUE(r.ok()) << r.error().message;
    } else {
      EXPECT_TRUE(FailsWith(r, {"s.safetensors: "})) << "prefix " << n;
    }
  }
}

TEST(Safetensors, BitFlipSweep) {
  ScratchDir dir;
  const auto full = small_valid_file(dir);
  size_t parsed = 0;
  for (size_t i = 0; i < full.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::vector<uint8_t> b = full;
      b[i] ^= static_cast<uint8_t>(1u << bit);
      auto r = SafetensorsFile::parse(b.data(), b.size(), "f.safetensors");
      if (!r.ok()) {
        ASSERT_TRUE(FailsWith(r, {"f.safetensors: "}));
        continue;
      }
      ++parsed;
      for (const auto& t : r->tensors()) {
        const auto* p = static_cast<const uint8_t*>(t.data);
        ASSERT_GE(p, b.data());
        ASSERT_LE(p + t.nbytes, b.data() + b.size());
        ASSERT_EQ(t.view().nbytes(), t.nbytes);
      }
    }
  }
  EXPECT_GT(parsed, 0u);
}

}  // namespace
}  // namespace mixtral
