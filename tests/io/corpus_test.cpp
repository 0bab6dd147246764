// Reads the fuzz seed files, which tests/fuzz/make_corpus.py writes with its own (Python) encoder of both
// formats, and checks the values it put there: a cross-check of the readers against a second writer.
#include <gtest/gtest.h>

#include <tuple>

#include "io/gguf.h"
#include "io/safetensors.h"
#include "io_test_util.h"

namespace mixtral {
namespace {

using testing::FailsWith;

std::string seed(const std::string& rel) {
  return std::string(MIXTRAL_FUZZ_CORPUS) + "/" + rel;
}

// make_corpus.py fills byte j of its i-th GGUF tensor with (31 i + 7 j) mod 256.
void expect_gguf_pattern(const GgufTensorInfo& t, int i) {
  const auto* p = static_cast<const uint8_t*>(t.data);
  for (size_t j = 0; j < t.nbytes; ++j)
    ASSERT_EQ(p[j], static_cast<uint8_t>(31 * i + 7 * static_cast<int>(j))) << t.name << " byte " << j;
}

TEST(SeedCorpus, GgufAllTypesV2) {
  auto g = GgufFile::open(seed("gguf/all_types_v2.gguf"));
  ASSERT_TRUE(g.ok()) << g.error().message;
  EXPECT_EQ(g->version(), 2u);
  EXPECT_EQ(**g->get_int("u8"), 200);
  EXPECT_EQ(**g->get_int("i8"), -5);
  EXPECT_EQ(**g->get_int("u16"), 60000);
  EXPECT_EQ(**g->get_int("i16"), -300);
  EXPECT_EQ(**g->get_int("u32"), 7);
  EXPECT_EQ(**g->get_int("i32"), -7);
  EXPECT_EQ(**g->get_float("f32"), 0.5);
  EXPECT_EQ(**g->get_bool("bool"), true);
  EXPECT_EQ(**g->get_string("str"), "hello");
  EXPECT_EQ(**g->get_int("u64"), int64_t{1} << 40);
  EXPECT_EQ(**g->get_int("i64"), -(int64_t{1} << 40));
  EXPECT_EQ(**g->get_float("f64"), 1e-5);
  EXPECT_EQ(**g->get_int_array("arr.i32"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(**g->get_float_array("arr.f32"), (std::vector<double>{0.0, -1.5}));
  EXPECT_EQ(**g->get_int_array("arr.u64"), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(g->metadata().at("arr.bool").array_type, GgufType::kBool);
  EXPECT_TRUE(g->get_string_array("arr.empty")->value().empty());

  ASSERT_EQ(g->tensors().size(), 2u);
  const TensorView a = g->find_tensor("a")->view();
  EXPECT_EQ(shape_string(a), "[2, 3]");
  EXPECT_EQ(a.dtype, DType::F32);
  EXPECT_EQ(g->find_tensor("a")->nbytes, 24u);
  expect_gguf_pattern(*g->find_tensor("a"), 0);
  const TensorView b = g->find_tensor("b")->view();
  EXPECT_EQ(shape_string(b), "[1, 32]");
  EXPECT_EQ(b.dtype, DType::Q8_0);
  EXPECT_EQ(g->find_tensor("b")->offset, 32u);
  expect_gguf_pattern(*g->find_tensor("b"), 1);
}

TEST(SeedCorpus, GgufAlignment64AndBlockTypes) {
  auto g = GgufFile::open(seed("gguf/types_align64.gguf"));
  ASSERT_TRUE(g.ok()) << g.error().message;
  EXPECT_EQ(g->alignment(), 64u);
  const std::vector<std::tuple<std::string, DType, uint64_t, size_t>> want = {
      {"f16", DType::F16, 0, 16},
      {"bf16", DType::BF16, 64, 16},
      {"q4_0", DType::Q4_0, 128, 36},
      {"q4_k", DType::Q4_K, 192, 144}};
  for (size_t i = 0; i < want.size(); ++i) {
    const auto& [name, dtype, offset, nbytes] = want[i];
    const GgufTensorInfo* t = g->find_tensor(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->dtype, dtype) << name;
    EXPECT_EQ(t->offset, offset) << name;
    EXPECT_EQ(t->nbytes, nbytes) << name;
    expect_gguf_pattern(*t, static_cast<int>(i));
  }
}

TEST(SeedCorpus, GgufMergedExpertsSliceByExpert) {
  auto g = GgufFile::open(seed("gguf/mixtral_merged.gguf"));
  ASSERT_TRUE(g.ok()) << g.error().message;
  EXPECT_EQ(**g->get_string("general.architecture"), "llama");
  EXPECT_EQ(**g->get_int("llama.expert_count"), 2);
  EXPECT_FLOAT_EQ(static_cast<float>(**g->get_float("llama.rope.freq_base")), 1e6f);
  EXPECT_EQ((**g->get_string_array("tokenizer.ggml.tokens"))[3], "\xe2\x96\x81the");
  const GgufTensorInfo* up = g->find_tensor("blk.0.ffn_up_exps.weight");
  ASSERT_NE(up, nullptr);
  const TensorView v = up->view();
  EXPECT_EQ(shape_string(v), "[2, 2, 32]");  // [experts, rows, cols]
  const TensorView e1 = v.slice(1);
  EXPECT_EQ(static_cast<const uint8_t*>(e1.data) - static_cast<const uint8_t*>(v.data), 2 * 34);
  EXPECT_EQ(e1.nbytes(), 68u);
}

TEST(SeedCorpus, Safetensors) {
  auto f = SafetensorsFile::open(seed("safetensors/types.safetensors"));
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ(f->metadata().at("format"), "pt");
  const std::vector<std::tuple<std::string, DType, std::vector<int64_t>, size_t>> want = {
      {"w", DType::F32, {2, 3}, 24}, {"h", DType::F16, {5}, 10}, {"b", DType::BF16, {2, 2, 2}, 16}};
  for (size_t i = 0; i < want.size(); ++i) {
    const auto& [name, dtype, shape, nbytes] = want[i];
    const SafetensorsTensor* t = f->find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->dtype, dtype);
    EXPECT_EQ(t->shape, shape);
    ASSERT_EQ(t->nbytes, nbytes);
    const auto* p = static_cast<const uint8_t*>(t->data);
    for (size_t j = 0; j < nbytes; ++j)
      ASSERT_EQ(p[j], static_cast<uint8_t>(13 * i + j)) << name << " byte " << j;
  }
  EXPECT_EQ(f->tensors()[0].name, "w");  // file order
  auto bad = SafetensorsFile::open(seed("safetensors/unsupported_dtype.safetensors"));
  EXPECT_TRUE(FailsWith(bad, {"unsupported_dtype.safetensors: tensor 'ids' has dtype I64, only F32/F16/BF16 "
                              "are supported"}));
}

}  // namespace
}  // namespace mixtral
