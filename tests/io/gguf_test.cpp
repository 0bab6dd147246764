#include "io/gguf.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <map>

#include "io_test_util.h"
#include "tensor/quant.h"

namespace mixtral {
namespace {

using testing::Bytes;
using testing::FailsWith;
using testing::ScratchDir;

constexpr uint32_t kF32 = 0, kF16 = 1, kQ8_0 = 8;

// A tensor written by the round-trip tests, with the bytes its fill produced.
struct Expected {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

GgufTensorSpec pattern_spec(const std::string& name, DType dtype, std::vector<int64_t> shape, uint32_t seed,
                            std::map<std::string, Expected>* expected) {
  GgufTensorSpec s;
  s.name = name;
  s.dtype = dtype;
  s.shape = shape;
  s.fill = [=](uint8_t* dst, size_t n) {
    testing::fill_pattern(dst, n, seed);
    (*expected)[name] = {dtype, shape, std::vector<uint8_t>(dst, dst + n)};
  };
  return s;
}

void add_all_types(GgufWriter& w) {
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.block_count", 32);
  w.set_i32("llama.neg", -7);
  w.set_f32("llama.rope.freq_base", 1e6f);
  w.set_bool("general.flag", true);
  w.set_string_array("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "", "\xe2\x96\x81hi"});
  w.set_f32_array("tokenizer.ggml.scores", {0.0f, -1.5f, 2.25f});
  w.set_i32_array("tokenizer.ggml.token_type", {2, 3, 3, 1, -1});
  w.set("t.u8", {GgufType::kU8, GgufType::kU32, uint64_t{255}});
  w.set("t.i8", {GgufType::kI8, GgufType::kU32, int64_t{-128}});
  w.set("t.u16", {GgufType::kU16, GgufType::kU32, uint64_t{65535}});
  w.set("t.i16", {GgufType::kI16, GgufType::kU32, int64_t{-32768}});
  w.set("t.u64", {GgufType::kU64, GgufType::kU32, uint64_t{1} << 40});
  w.set("t.u64big", {GgufType::kU64, GgufType::kU32, std::numeric_limits<uint64_t>::max()});
  w.set("t.i64", {GgufType::kI64, GgufType::kU32, int64_t{-(int64_t{1} << 50)}});
  w.set("t.f64", {GgufType::kF64, GgufType::kU32, 0.1});
  w.set("t.bools", {GgufType::kArray, GgufType::kBool, std::vector<int64_t>{1, 0, 1}});
  w.set("t.u64s", {GgufType::kArray, GgufType::kU64, std::vector<int64_t>{0, int64_t{1} << 62}});
  w.set("t.f64s", {GgufType::kArray, GgufType::kF64, std::vector<double>{0.1, -2.0}});
  w.set("t.empty", {GgufType::kArray, GgufType::kString, std::vector<std::string>{}});
}

void check_all_types(const GgufFile& g) {
  EXPECT_EQ(**g.get_string("general.architecture"), "llama");
  EXPECT_EQ(**g.get_int("llama.block_count"), 32);
  EXPECT_EQ(**g.get_int("llama.neg"), -7);
  EXPECT_EQ(**g.get_float("llama.rope.freq_base"), 1e6);
  EXPECT_EQ(**g.get_bool("general.flag"), true);
  EXPECT_EQ(**g.get_string_array("tokenizer.ggml.tokens"),
            (std::vector<std::string>{"<unk>", "<s>", "</s>", "", "\xe2\x96\x81hi"}));
  EXPECT_EQ(**g.get_float_array("tokenizer.ggml.scores"), (std::vector<double>{0.0, -1.5, 2.25}));
  EXPECT_EQ(**g.get_int_array("tokenizer.ggml.token_type"), (std::vector<int64_t>{2, 3, 3, 1, -1}));
  EXPECT_EQ(**g.get_int("t.u8"), 255);
  EXPECT_EQ(**g.get_int("t.i8"), -128);
  EXPECT_EQ(**g.get_int("t.u16"), 65535);
  EXPECT_EQ(**g.get_int("t.i16"), -32768);
  EXPECT_EQ(**g.get_int("t.u64"), int64_t{1} << 40);
  EXPECT_EQ(**g.get_int("t.i64"), -(int64_t{1} << 50));
  EXPECT_EQ(**g.get_float("t.f64"), 0.1);
  EXPECT_EQ(**g.get_float("t.u8"), 255.0);
  EXPECT_EQ(std::get<std::vector<int64_t>>(g.metadata().at("t.bools").v), (std::vector<int64_t>{1, 0, 1}));
  EXPECT_FALSE(g.get_int_array("t.bools").ok());  // bools are not integers
  EXPECT_EQ(**g.get_int_array("t.u64s"), (std::vector<int64_t>{0, int64_t{1} << 62}));
  EXPECT_EQ(**g.get_float_array("t.f64s"), (std::vector<double>{0.1, -2.0}));
  EXPECT_EQ(**g.get_float_array("tokenizer.ggml.token_type"), (std::vector<double>{2, 3, 3, 1, -1}));
  EXPECT_TRUE(g.get_string_array("t.empty")->value().empty());
  // Stored types survive.
  EXPECT_EQ(g.metadata().at("t.u16").type, GgufType::kU16);
  EXPECT_EQ(g.metadata().at("tokenizer.ggml.scores").array_type, GgufType::kF32);
  EXPECT_EQ(g.metadata().at("t.bools").array_type, GgufType::kBool);
  // Absent keys are nullopt, not errors.
  EXPECT_FALSE(g.get_int("nope")->has_value());
  EXPECT_FALSE(g.get_string_array("nope")->has_value());
}

class GgufRoundTrip : public ::testing::TestWithParam<uint32_t> {};

TEST_P(GgufRoundTrip, MetadataShapesAndBytes) {
  const uint32_t version = GetParam();
  ScratchDir dir;
  const std::string path = dir.file("rt.gguf");
  std::map<std::string, Expected> expected;
  GgufWriter w;
  add_all_types(w);
  w.add_tensor(pattern_spec("token_embd.weight", DType::F32, {3, 4}, 1, &expected));
  w.add_tensor(pattern_spec("blk.0.attn_norm.weight", DType::F16, {8}, 2, &expected));
  w.add_tensor(pattern_spec("bf", DType::BF16, {5}, 3, &expected));
  w.add_tensor(pattern_spec("blk.0.attn_q.weight", DType::Q8_0, {2, 64}, 4, &expected));
  w.add_tensor(pattern_spec("q4", DType::Q4_0, {3, 32}, 5, &expected));
  w.add_tensor(pattern_spec("blk.0.ffn_up_exps.weight", DType::Q8_0, {2, 3, 32}, 6, &expected));
  w.add_tensor(pattern_spec("k_quant", DType::Q4_K, {1, 256}, 7, &expected));
  w.add_tensor(pattern_spec("four_d", DType::F32, {2, 1, 3, 2}, 8, &expected));
  ASSERT_TRUE(w.write(path, version).ok());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  auto g = GgufFile::open(path);
  ASSERT_TRUE(g.ok()) << g.error().message;
  EXPECT_EQ(g->version(), version);
  EXPECT_EQ(g->alignment(), 32u);
  EXPECT_EQ(g->path(), path);
  check_all_types(*g);
  EXPECT_EQ(g->metadata().count("general.alignment"), 0u);

  ASSERT_EQ(g->tensors().size(), expected.size());
  const uint8_t* first = static_cast<const uint8_t*>(g->tensors()[0].data);
  for (const auto& t : g->tensors()) {
    SCOPED_TRACE(t.name);
    ASSERT_TRUE(expected.count(t.name));
    const Expected& e = expected[t.name];
    EXPECT_EQ(t.dtype, e.dtype);
    EXPECT_EQ(t.ggml_type, static_cast<uint32_t>(e.dtype));
    EXPECT_EQ(t.ne, std::vector<int64_t>(e.shape.rbegin(), e.shape.rend()));
    EXPECT_EQ(t.offset % 32, 0u);
    EXPECT_EQ(static_cast<const uint8_t*>(t.data) - first, static_cast<ptrdiff_t>(t.offset));
    ASSERT_EQ(t.nbytes, e.bytes.size());
    EXPECT_EQ(std::memcmp(t.data, e.bytes.data(), t.nbytes), 0);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 32, 0u);  // the mapping is page aligned
    const TensorView v = t.view();
    ASSERT_EQ(v.ndim, static_cast<int>(e.shape.size()));
    for (int d = 0; d < v.ndim; ++d) EXPECT_EQ(v.shape[d], e.shape[d]);
    EXPECT_EQ(v.nbytes(), t.nbytes);
    EXPECT_EQ(v.data, t.data);
    EXPECT_EQ(g->find_tensor(t.name), &t);
  }
  EXPECT_EQ(g->find_tensor("missing"), nullptr);
  // Insertion order is kept: tensor infos and data appear in add_tensor order.
  EXPECT_EQ(g->tensors()[0].name, "token_embd.weight");
  EXPECT_EQ(g->tensors().back().name, "four_d");
  EXPECT_EQ(g->tensors()[0].offset, 0u);
  EXPECT_EQ(std::filesystem::file_size(path) % 32, 0u);
}

INSTANTIATE_TEST_SUITE_P(Versions, GgufRoundTrip, ::testing::Values(2u, 3u));

TEST(GgufWriter, KeysAreWrittenInInsertionOrder) {
  ScratchDir dir;
  const std::string path = dir.file("order.gguf");
  GgufWriter w;
  w.set_u32("zeta", 1);
  w.set_u32("alpha", 2);
  w.set_u32("mid", 3);
  w.set_u32("alpha", 4);  // replaces in place
  ASSERT_TRUE(w.write(path).ok());
  const auto b = testing::read_bytes(path);
  const std::string s(b.begin(), b.end());
  const size_t z = s.find("zeta"), a = s.find("alpha"), m = s.find("mid");
  ASSERT_NE(z, std::string::npos);
  EXPECT_LT(z, a);
  EXPECT_LT(a, m);
  EXPECT_EQ(s.find("alpha", a + 1), std::string::npos);
  auto g = GgufFile::open(path);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(**g->get_int("alpha"), 4);
  EXPECT_EQ(g->metadata().size(), 3u);
}

TEST(GgufWriter, ExactHeaderBytes) {
  ScratchDir dir;
  const std::string path = dir.file("exact.gguf");
  GgufWriter w;
  w.set_u32("a", 7);
  w.add_tensor({"t", DType::F32, {2}, [](uint8_t* d, size_t n) {
                  ASSERT_EQ(n, 8u);
                  const float v[2] = {1.0f, -2.0f};
                  std::memcpy(d, v, 8);
                }});
  ASSERT_TRUE(w.write(path).ok());
  Bytes want;
  want.text("GGUF").u32(3).u64(1).u64(1);
  want.str("a").u32(4).u32(7);
  want.str("t").u32(1).u64(2).u32(kF32).u64(0);
  want.pad_to(32).f32(1.0f).f32(-2.0f).pad_to(32);
  EXPECT_EQ(testing::read_bytes(path), want.b);
}

TEST(GgufWriter, CustomAlignmentIsRecordedAndHonoured) {
  ScratchDir dir;
  const std::string path = dir.file("a64.gguf");
  std::map<std::string, Expected> expected;
  GgufWriter w;
  w.add_tensor(pattern_spec("a", DType::F16, {3}, 1, &expected));
  w.add_tensor(pattern_spec("b", DType::Q8_0, {32}, 2, &expected));
  ASSERT_TRUE(w.write(path, 3, 64).ok());
  auto g = GgufFile::open(path);
  ASSERT_TRUE(g.ok()) << g.error().message;
  EXPECT_EQ(g->alignment(), 64u);
  EXPECT_EQ(**g->get_int("general.alignment"), 64);
  EXPECT_EQ(g->metadata().at("general.alignment").type, GgufType::kU32);
  EXPECT_EQ(g->find_tensor("b")->offset, 64u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(g->find_tensor("b")->data) % 64, 0u);
  EXPECT_EQ(std::memcmp(g->find_tensor("b")->data, expected["b"].bytes.data(), 34), 0);
}

TEST(GgufWriter, QuantizedDataReadsBackToTheSameValues) {
  ScratchDir dir;
  const std::string path = dir.file("q.gguf");
  std::vector<float> src(64);  // [2, 32]
  for (size_t i = 0; i < src.size(); ++i) src[i] = std::sin(0.37f * static_cast<float>(i)) * 3.0f;
  GgufWriter w;
  w.add_tensor({"w", DType::Q8_0, {2, 32}, [&](uint8_t* d, size_t n) {
                  ASSERT_EQ(n, 2 * sizeof(BlockQ8_0));
                  for (int r = 0; r < 2; ++r) quantize_row(DType::Q8_0, src.data() + 32 * r, d + r * 34, 32);
                }});
  ASSERT_TRUE(w.write(path).ok());
  auto g = GgufFile::open(path);
  ASSERT_TRUE(g.ok());
  const TensorView v = g->find_tensor("w")->view();
  ASSERT_EQ(v.rows(), 2);
  std::vector<float> back(32);
  for (int r = 0; r < 2; ++r) {
    dequantize_row(DType::Q8_0, v.row(r), back.data(), 32);
    for (int i = 0; i < 32; ++i) EXPECT_NEAR(back[i], src[32 * r + i], 3.0f / 127) << r << "," << i;
  }
}

TEST(GgufWriter, RefusesBadSpecs) {
  ScratchDir dir;
  const std::string path = dir.file("bad.gguf");
  auto fill = [](uint8_t*, size_t) {};
  {
    GgufWriter w;
    w.add_tensor({"X", DType::Q8_0, {4, 100}, fill});
    EXPECT_TRUE(
        FailsWith(w.write(path),
                  {path + ": tensor 'X': row of 100 elements is not a multiple of q8_0's block size 32"}));
  }
  {
    GgufWriter w;
    w.add_tensor({"dup", DType::F32, {1}, fill});
    w.add_tensor({"dup", DType::F32, {1}, fill});
    EXPECT_TRUE(FailsWith(w.write(path), {path, "duplicate tensor name 'dup'"}));
  }
  {
    GgufWriter w;
    w.add_tensor({"z", DType::F32, {3, 0}, fill});
    EXPECT_TRUE(FailsWith(w.write(path), {path, "tensor 'z'", "dimension of size 0"}));
  }
  {
    GgufWriter w;
    w.add_tensor({"five", DType::F32, {1, 1, 1, 1, 1}, fill});
    EXPECT_TRUE(FailsWith(w.write(path), {path, "tensor 'five'", "at most 4"}));
  }
  {
    GgufWriter w;
    w.add_tensor({"huge", DType::F32, {int64_t{1} << 40, int64_t{1} << 40}, fill});
    EXPECT_TRUE(FailsWith(w.write(path), {path, "tensor 'huge'", "overflows"}));
  }
  {
    GgufWriter w;
    w.add_tensor({"nofill", DType::F32, {1}, nullptr});
    auto s = w.write(path);
    EXPECT_TRUE(FailsWith(s, {path, "tensor 'nofill'", "no fill callback"}));
  }
  {
    GgufWriter w;
    w.add_tensor({"odd", static_cast<DType>(99), {1}, fill});
    EXPECT_TRUE(FailsWith(w.write(path), {path, "tensor 'odd'", "unknown GGML type 99"}));
  }
  {
    GgufWriter w;
    w.set("small", {GgufType::kU8, GgufType::kU32, uint64_t{300}});
    EXPECT_TRUE(FailsWith(w.write(path), {path, "key 'small'", "300 does not fit in u8"}));
  }
  {
    GgufWriter w;
    w.set("neg", {GgufType::kU32, GgufType::kU32, int64_t{-1}});
    EXPECT_TRUE(FailsWith(w.write(path), {path, "key 'neg'", "does not fit in u32"}));
  }
  {
    GgufWriter w;
    w.set("mismatch", {GgufType::kString, GgufType::kU32, 1.5});
    EXPECT_TRUE(FailsWith(w.write(path), {path, "key 'mismatch'", "does not hold a string"}));
  }
  {
    GgufWriter w;
    w.set("nested", {GgufType::kArray, GgufType::kArray, std::vector<int64_t>{}});
    EXPECT_TRUE(FailsWith(w.write(path), {path, "key 'nested'"}));
  }
  {
    GgufWriter w;
    w.set("wrongarr", {GgufType::kArray, GgufType::kF32, std::vector<std::string>{"x"}});
    EXPECT_TRUE(FailsWith(w.write(path), {path, "key 'wrongarr'", "array of f32"}));
  }
  {
    GgufWriter w;
    w.set_u32("general.alignment", 64);
    EXPECT_TRUE(FailsWith(w.write(path, 3, 32), {path, "general.alignment", "disagrees"}));
    EXPECT_TRUE(w.write(path, 3, 64).ok());
  }
  {
    GgufWriter w;
    auto s = w.write(path, 1);
    EXPECT_TRUE(FailsWith(s, {path, "version 1"}));
    EXPECT_EQ(s.error().kind, ErrorKind::kUsage);
    EXPECT_TRUE(FailsWith(w.write(path, 3, 48), {path, "alignment 48"}));
    EXPECT_TRUE(FailsWith(w.write(path, 3, 0), {path, "alignment 0"}));
  }
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

TEST(GgufWriter, TensorsWithoutMetadataAndEmptyFiles) {
  ScratchDir dir;
  GgufWriter w;
  ASSERT_TRUE(w.write(dir.file("empty.gguf")).ok());
  auto g = GgufFile::open(dir.file("empty.gguf"));
  ASSERT_TRUE(g.ok()) << g.error().message;
  EXPECT_TRUE(g->tensors().empty());
  EXPECT_TRUE(g->metadata().empty());
}

// ---- reader: hand-made files ----

// The fixed header: magic, version, tensor count, kv count.
Bytes header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
  Bytes b;
  b.text("GGUF").u32(version).u64(n_tensors).u64(n_kv);
  return b;
}

void tensor_info(Bytes& b, std::string_view name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
  b.str(name).u32(static_cast<uint32_t>(ne.size()));
  for (auto n : ne) b.u64(n);
  b.u32(type).u64(offset);
}

Result<GgufFile> parse(const Bytes& b, const std::string& name = "x.gguf") {
  return GgufFile::parse(b.b.data(), b.size(), name);
}

TEST(GgufReader, ScalarTensorAndNoPaddingWithoutTensors) {
  Bytes b = header(1, 0);
  tensor_info(b, "s", {}, kF32, 0);
  b.pad_to(32).f32(3.5f);
  auto g = parse(b);
  ASSERT_TRUE(g.ok()) << g.error().message;
  const TensorView v = g->tensors()[0].view();
  EXPECT_EQ(v.ndim, 0);
  EXPECT_EQ(v.numel(), 1);
  EXPECT_EQ(g->tensors()[0].nbytes, 4u);

  Bytes meta = header(0, 1);
  meta.str("k").u32(8).str("v");  // ends unaligned, no data section
  auto m = parse(meta);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(**m->get_string("k"), "v");
}

TEST(GgufReader, OpenErrorsNameThePath) {
  ScratchDir dir;
  const std::string path = dir.file("model.gguf");
  EXPECT_TRUE(FailsWith(GgufFile::open(path), {path + ": cannot open: No such file or directory"}));
  testing::write_bytes(path, {});
  auto e = GgufFile::open(path);
  EXPECT_TRUE(FailsWith(e, {path + ": empty file"}));
  EXPECT_EQ(e.error().kind, ErrorKind::kData);
  std::filesystem::create_directory(dir.file("d.gguf"));
  EXPECT_TRUE(FailsWith(GgufFile::open(dir.file("d.gguf")), {"d.gguf: is a directory"}));
}

TEST(GgufReader, RefusesBadHeaders) {
  Bytes elf;
  elf.u8(0x7f).text("ELF").zeros(40);
  EXPECT_TRUE(FailsWith(parse(elf), {"x.gguf: not a GGUF file (magic 7f 45 4c 46"}));
  Bytes two;
  two.text("GG");
  EXPECT_TRUE(FailsWith(parse(two), {"x.gguf: not a GGUF file (magic 47 47,"}));
  EXPECT_TRUE(FailsWith(parse(header(0, 0, 1)), {"x.gguf: unsupported GGUF version 1"}));
  EXPECT_TRUE(FailsWith(parse(header(0, 0, 4)), {"x.gguf: unsupported GGUF version 4"}));
  EXPECT_TRUE(
      FailsWith(parse(header(0, 0, 0x03000000)), {"x.gguf: big-endian GGUF files are not supported"}));
  Bytes cut;
  cut.text("GGUF").u32(3).u32(0);
  EXPECT_TRUE(FailsWith(parse(cut), {"x.gguf: truncated file", "tensor count"}));
  EXPECT_TRUE(FailsWith(parse(header(0, uint64_t{1} << 60)), {"x.gguf: metadata count 1152921504606846976"}));
  EXPECT_TRUE(
      FailsWith(parse(header(1000, 0)), {"x.gguf: tensor count 1000 is larger than the file could hold"}));
}

TEST(GgufReader, RefusesBadMetadata) {
  {
    Bytes b = header(0, 1);
    b.u64(1000).text("abc").zeros(20);
    EXPECT_TRUE(FailsWith(parse(b), {"x.gguf: truncated file: metadata entry 0 key", "needs 1000 bytes"}));
  }
  {
    Bytes b = header(0, 1);
    b.str("general.name").u32(8).u64(uint64_t{1} << 62).zeros(4);
    EXPECT_TRUE(FailsWith(parse(b), {"x.gguf: truncated file: key 'general.name' string"}));
  }
  {
    Bytes b = header(0, 1);
    b.str("weird").u32(13).zeros(8);
    EXPECT_TRUE(FailsWith(parse(b), {"x.gguf: key 'weird': unknown value type 13"}));
  }
  {
    Bytes b = header(0, 1);
    b.str("nest").u32(9).u32(9).u64(1).u32(4).u64(1).u32(5);
    EXPECT_TRUE(FailsWith(parse(b), {"x.gguf: key 'nest': arrays of arrays are not supported"}));
  }
  {
    Bytes b = header(0, 1);
    b.str("arr").u32(9).u32(77).u64(0);
    EXPECT_TRUE(FailsWith(parse(b), {"x.gguf: key 'arr': unknown array element type 77"}));
  }
  {
    Bytes b = header(0, 1);
    b.str("tokens").u32(9).u32(8).u64(uint64_t{1} << 61).zeros(16);
    EXPECT_TRUE(FailsWith(parse(b),
                          {"x.gguf: key 'tokens': array of 2305843009213693952 string elements runs past"}));
  }
  {
    Bytes b = header(0, 1);
    b.str("tokens").u32(9).u32(8).u64(2).str("a").u64(99);
    EXPECT_TRUE(FailsWith(parse(b), {"x.gguf: truncated file: key 'tokens' array string"}));
  }
  {
    Bytes b = header(0, 1);
    b.str("big").u32(9).u32(10).u64(1).u64(~uint64_t{0});
    EXPECT_TRUE(FailsWith(parse(b), {"x.gguf: key 'big': u64 array element 0", "does not fit in int64"}));
  }
  {
    Bytes b = header(0, 2);
    b.str("k").u32(4).u32(1).str("k").u32(4).u32(2);
    EXPECT_TRUE(FailsWith(parse(b), {"x.gguf: key 'k': duplicate key"}));
  }
  {
    Bytes b = header(0, 1);
    b.str("bad\nname\x01").u32(13).zeros(8);
    auto r = parse(b);
    EXPECT_TRUE(FailsWith(r, {"key 'bad\\x0aname\\x01'"}));  // escaped, still one line
  }
}

TEST(GgufReader, RefusesBadAlignment) {
  for (uint32_t a : {0u, 3u, 48u}) {
    Bytes b = header(0, 1);
    b.str("general.alignment").u32(4).u32(a);
    EXPECT_TRUE(FailsWith(
        parse(b), {"x.gguf: key 'general.alignment' is " + std::to_string(a), "nonzero power of two"}));
  }
  Bytes s = header(0, 1);
  s.str("general.alignment").u32(8).str("32");
  EXPECT_TRUE(FailsWith(parse(s), {"x.gguf: key 'general.alignment' has type string, expected an integer"}));
  Bytes ok = header(1, 1);
  ok.str("general.alignment").u32(4).u32(8);
  tensor_info(ok, "t", {2}, kF16, 0);
  ok.pad_to(8).zeros(4);
  auto g = parse(ok);
  ASSERT_TRUE(g.ok()) << g.error().message;
  EXPECT_EQ(g->alignment(), 8u);
}

// A one-tensor file with the given info and `data_bytes` of data.
Bytes one_tensor(std::string_view name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset,
                 size_t data_bytes) {
  Bytes b = header(1, 0);
  tensor_info(b, name, std::move(ne), type, offset);
  b.pad_to(32).zeros(data_bytes);
  return b;
}

TEST(GgufReader, RefusesBadTensorInfos) {
  EXPECT_TRUE(FailsWith(parse(one_tensor("blk.0.attn_q.weight", {32, 2}, 99, 0, 64)),
                        {"x.gguf: tensor 'blk.0.attn_q.weight': unknown GGML type 99"}));
  EXPECT_TRUE(
      FailsWith(parse(one_tensor("X", {100, 2}, kQ8_0, 0, 1000)),
                {"x.gguf: tensor 'X': row of 100 elements is not a multiple of q8_0's block size 32"}));
  EXPECT_TRUE(FailsWith(parse(one_tensor("X", {256, 1}, 12, 0, 10)),
                        {"x.gguf: tensor 'X' data [", "runs past the end of the file (size"}));
  EXPECT_TRUE(FailsWith(parse(one_tensor("X", {4}, kF32, 16, 64)),
                        {"x.gguf: tensor 'X': offset 16 is not a multiple of the alignment 32"}));
  EXPECT_TRUE(FailsWith(parse(one_tensor("X", {4}, kF32, 32, 40)),
                        {"x.gguf: tensor 'X' data [", "runs past the end of the file (size"}));
  EXPECT_TRUE(
      FailsWith(parse(one_tensor("X", {4}, kF32, ~uint64_t{31}, 40)),
                {"x.gguf: tensor 'X' data offset 18446744073709551584 runs past the end of the file"}));
  EXPECT_TRUE(FailsWith(parse(one_tensor("X", {4, 0}, kF32, 0, 16)), {"x.gguf: tensor 'X': ne[1] = 0"}));
  EXPECT_TRUE(
      FailsWith(parse(one_tensor("X", {~uint64_t{0}}, kF32, 0, 16)), {"x.gguf: tensor 'X': ne[0] ="}));
  EXPECT_TRUE(FailsWith(parse(one_tensor("X", {uint64_t{1} << 40, uint64_t{1} << 40}, kF32, 0, 16)),
                        {"x.gguf: tensor 'X': element count overflows"}));
  EXPECT_TRUE(FailsWith(parse(one_tensor("X", {uint64_t{1} << 62}, kF32, 0, 16)),
                        {"x.gguf: tensor 'X': data size overflows 2^62 bytes"}));
  EXPECT_TRUE(FailsWith(parse(one_tensor("X", {1, 1, 1, 1, 1}, kF32, 0, 16)),
                        {"x.gguf: tensor 'X': n_dims 5, at most 4 are supported"}));
  // Known types this build cannot compute with (q8_1) still parse; the model loader refuses them.
  auto k = parse(one_tensor("K", {64}, 9, 0, 72));
  ASSERT_TRUE(k.ok()) << k.error().message;
  EXPECT_EQ(k->tensors()[0].dtype, DType::Q8_1);
  EXPECT_EQ(k->tensors()[0].nbytes, 72u);
}

// Every block type: a row that is not whole blocks, and data one byte short of the end, fail naming the
// tensor; exactly enough data parses with the GGML block size.
TEST(GgufReader, BlockTypesCheckRowsAndDataSize) {
  struct T {
    uint32_t id;
    const char* name;
    uint64_t block, bytes;
  };
  for (const T& t :
       {T{3, "q4_1", 32, 20}, T{6, "q5_0", 32, 22}, T{7, "q5_1", 32, 24}, T{10, "q2_k", 256, 84},
        T{11, "q3_k", 256, 110}, T{12, "q4_k", 256, 144}, T{13, "q5_k", 256, 176}, T{14, "q6_k", 256, 210},
        T{15, "q8_k", 256, 292}, T{16, "iq2_xxs", 256, 66}, T{17, "iq2_xs", 256, 74},
        T{18, "iq3_xxs", 256, 98}, T{19, "iq1_s", 256, 50}, T{20, "iq4_nl", 32, 18}, T{21, "iq3_s", 256, 110},
        T{22, "iq2_s", 256, 82}, T{23, "iq4_xs", 256, 136}, T{29, "iq1_m", 256, 56}}) {
    const uint64_t row = 2 * t.block, rows = 3, need = rows * row / t.block * t.bytes;
    EXPECT_TRUE(
        FailsWith(parse(one_tensor("blk.1.ffn_up.weight", {row - t.block / 2, rows}, t.id, 0, 4096)),
                  {"x.gguf: tensor 'blk.1.ffn_up.weight': row of " + std::to_string(row - t.block / 2) +
                   " elements is not a multiple of " + t.name + "'s block size " + std::to_string(t.block)}))
        << t.name;
    EXPECT_TRUE(FailsWith(parse(one_tensor("W", {row, rows}, t.id, 0, need - 1)),
                          {"x.gguf: tensor 'W' data [", "runs past the end of the file"}))
        << t.name;
    auto ok = parse(one_tensor("W", {row, rows}, t.id, 0, need));
    ASSERT_TRUE(ok.ok()) << t.name << ": " << ok.error().message;
    EXPECT_EQ(ok->tensors()[0].nbytes, need) << t.name;
    EXPECT_EQ(static_cast<uint32_t>(ok->tensors()[0].dtype), t.id) << t.name;
  }
}

TEST(GgufReader, RefusesDuplicateAndOverlappingTensors) {
  Bytes dup = header(2, 0);
  tensor_info(dup, "w", {4}, kF32, 0);
  tensor_info(dup, "w", {4}, kF32, 32);
  dup.pad_to(32).zeros(64);
  EXPECT_TRUE(FailsWith(parse(dup), {"x.gguf: tensor 'w': duplicate tensor name"}));

  Bytes over = header(2, 0);
  tensor_info(over, "a", {16}, kF32, 0);
  tensor_info(over, "b", {4}, kF32, 32);
  over.pad_to(32).zeros(64);
  EXPECT_TRUE(FailsWith(parse(over), {"x.gguf: tensors 'a' and 'b' overlap"}));
}

TEST(GgufReader, TruncatedTensorInfo) {
  Bytes b = header(1, 0);
  b.str("t").u32(3).u64(4).u64(4);
  EXPECT_TRUE(FailsWith(parse(b), {"x.gguf: truncated file: tensor 't' ne"}));
}

TEST(GgufReader, WrongTypeGettersNameFileAndKey) {
  ScratchDir dir;
  const std::string path = dir.file("types.gguf");
  GgufWriter w;
  add_all_types(w);
  ASSERT_TRUE(w.write(path).ok());
  auto g = GgufFile::open(path);
  ASSERT_TRUE(g.ok());
  EXPECT_TRUE(FailsWith(g->get_int("general.architecture"),
                        {path + ": key 'general.architecture' has type string, expected an integer"}));
  EXPECT_TRUE(FailsWith(g->get_int("t.f64"), {path, "key 't.f64' has type f64"}));
  EXPECT_TRUE(
      FailsWith(g->get_int("t.u64big"), {path, "key 't.u64big' value 18446744073709551615 is out of range"}));
  EXPECT_TRUE(
      FailsWith(g->get_float("general.flag"), {path, "key 'general.flag' has type bool, expected a number"}));
  EXPECT_TRUE(FailsWith(g->get_string("llama.block_count"), {path, "key 'llama.block_count' has type u32"}));
  EXPECT_TRUE(FailsWith(g->get_bool("t.u8"), {path, "key 't.u8' has type u8, expected bool"}));
  EXPECT_TRUE(
      FailsWith(g->get_string_array("tokenizer.ggml.scores"),
                {path, "key 'tokenizer.ggml.scores' has type array of f32, expected array of string"}));
  EXPECT_TRUE(FailsWith(g->get_float_array("tokenizer.ggml.tokens"), {path, "key 'tokenizer.ggml.tokens'"}));
  EXPECT_TRUE(FailsWith(g->get_int_array("tokenizer.ggml.scores"), {path, "key 'tokenizer.ggml.scores'"}));
  EXPECT_TRUE(FailsWith(g->get_int_array("llama.block_count"), {path, "expected array of integers"}));
}

// A small valid file with metadata and three tensors, for the sweeps.
std::vector<uint8_t> small_valid_file(const ScratchDir& dir) {
  const std::string path = dir.file("small.gguf");
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.block_count", 1);
  w.set_string_array("tokenizer.ggml.tokens", {"a", "bc"});
  w.set_f32_array("tokenizer.ggml.scores", {1.0f, 2.0f});
  w.set("flags", {GgufType::kArray, GgufType::kBool, std::vector<int64_t>{1, 0}});
  w.add_tensor({"a", DType::F32, {2, 3}, [](uint8_t* d, size_t n) { testing::fill_pattern(d, n, 1); }});
  w.add_tensor({"b", DType::Q8_0, {1, 32}, [](uint8_t* d, size_t n) { testing::fill_pattern(d, n, 2); }});
  w.add_tensor({"c", DType::F16, {3}, [](uint8_t* d, size_t n) { testing::fill_pattern(d, n, 3); }});
  EXPECT_TRUE(w.write(path).ok());
  return testing::read_bytes(path);
}

// Every prefix of a valid file either fails with a one-line error naming the file, or (only once all
// tensor data is present) parses. Each prefix is parsed from a heap buffer of exactly that size so
// that sanitizer builds catch any read past it.
TEST(GgufReader, TruncationSweep) {
  ScratchDir dir;
  const auto full = small_valid_file(dir);
  auto whole = GgufFile::parse(full.data(), full.size(), "s.gguf");
  ASSERT_TRUE(whole.ok()) << whole.error().message;
  const auto& last = whole->tensors().back();
  const size_t data_end = static_cast<const uint8_t*>(last.data) - full.data() + last.nbytes;
  for (size_t n = 0; n <= full.size(); ++n) {
    std::vector<uint8_t> prefix(full.begin(), full.begin() + static_cast<ptrdiff_t>(n));
    auto r = GgufFile::parse(prefix.data(), prefix.size(), "s.gguf");
    if (n >= data_end) {
      EXPECT_TRUE(r.ok()) << n << ": " << r.error().message;
    } else {
      EXPECT_TRUE(FailsWith(r, {"s.gguf: "})) << "prefix " << n;
    }
  }
}

// Flipping any bit of a valid file never crashes; whatever parses still has in-bounds tensors.
TEST(GgufReader, BitFlipSweep) {
  ScratchDir dir;
  const auto full = small_valid_file(dir);
  size_t parsed = 0;
  for (size_t i = 0; i < full.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::vector<uint8_t> b = full;
      b[i] ^= static_cast<uint8_t>(1u << bit);
      auto r = GgufFile::parse(b.data(), b.size(), "f.gguf");
      if (!r.ok()) {
        ASSERT_TRUE(FailsWith(r, {"f.gguf: "}));
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
  EXPECT_GT(parsed, 0u);  // flips inside tensor data and string bytes keep the file valid
}

}  // namespace
}  // namespace mixtral
