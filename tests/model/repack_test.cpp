// Weights repacked at load (LoadOptions::repack): which views change, that the file's records do not,
// and that the model's logits equal the file layout's for prefill and decode, under the kernels that
// repack and under the scalar kernels reading the repacked weights.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/kernels.h"
#include "model/test_model.h"
#include "model/weights.h"
#include "runtime/runtime.h"

namespace mixtral {
namespace {

namespace fs = std::filesystem;

// A small Mixtral whose every matmul has whole 256-value groups (dim 256, ffn 512), in type `type`.
std::string write_model(const std::string& layout, DType type, bool tied) {
  const fs::path dir = fs::temp_directory_path() /
                       ("mixtral-repack-test-" + std::to_string(::getpid()) + (tied ? "-tied" : ""));
  const fs::path path = dir / (layout + "-" + std::string(dtype_name(type)) + ".gguf");
  if (fs::exists(path)) return path.string();
  TestModelSpec spec;
  spec.config.dim = 256;
  spec.config.ffn_dim = 512;
  spec.config.n_layers = 2;
  spec.config.n_heads = 4;
  spec.config.n_kv_heads = 2;
  spec.config.head_dim = 64;
  spec.config.n_experts = 4;
  spec.config.n_experts_used = 2;
  spec.config.vocab_size = 320;
  spec.config.max_seq_len = 64;
  spec.config.tie_embeddings = tied;
  // Seeds whose 12 evaluated positions have no near-tied routing (top-2 choice) or other decision that
  // f32 rounding can flip: with these, the file layout's AVX-512 kernels, the R16 ones and the scalar ones
  // agree to 2e-7 of the largest logit for Q4_0 and Q8_0, tied and not. (About one seed in five has a
  // position where two correct kernels summing in different orders differ by 1e-4 to 1e-2.)
  spec.seed = tied ? 107 : 7;
  spec.types = {type};
  spec.layouts = {layout};
  spec.out_dir = dir.string();
  ThreadPool pool(2);
  const Status st = make_test_model(spec, pool);
  EXPECT_TRUE(st.ok()) << st.error().message;
  return path.string();
}

std::vector<const TensorView*> matmul_views(const Model& m) {
  std::vector<const TensorView*> v;
  for (const LayerWeights& L : m.layers) {
    for (const TensorView* w : {&L.wq, &L.wk, &L.wv, &L.wo}) v.push_back(w);
    for (const auto* experts : {&L.w1, &L.w3, &L.w2})
      for (const TensorView& w : *experts) v.push_back(&w);
  }
  return v;
}

// Logits of a 9-token prefill (every position) and 3 decode steps after it: [12, vocab].
std::vector<float> logits_of(const Model& m) {
  ThreadPool pool(2);
  Runtime rt(m, {32}, pool);
  PagedKvCache kv(m.config, DType::F32, 1, 16);  // one block of 16 positions
  SoloSequence seq(rt, kv, 16);
  const int64_t V = m.config.vocab_size;
  const std::vector<int32_t> prompt = {1, 17, 200, 45, 9, 130, 77, 3, 250}, more = {12, 99, 140};
  std::vector<float> out(static_cast<size_t>(12 * V));
  EXPECT_TRUE(seq.eval(prompt.data(), 9, 0, out.data(), true).ok());
  for (int64_t i = 0; i < 3; ++i)
    EXPECT_TRUE(seq.eval(&more[static_cast<size_t>(i)], 1, 9 + i, out.data() + (9 + i) * V, false).ok());
  return out;
}

struct IsaGuard {
  ~IsaGuard() { kernels::set_isa(kernels::detect_isa()); }
};

// Largest |a - b| over the logits, relative to the largest |b| of the same position.
double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b, int64_t vocab) {
  double worst = 0.0;
  for (size_t p = 0; p < a.size() / static_cast<size_t>(vocab); ++p) {
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < vocab; ++i) {
      const size_t k = p * static_cast<size_t>(vocab) + static_cast<size_t>(i);
      num = std::max(num, static_cast<double>(std::fabs(a[k] - b[k])));
      den = std::max(den, static_cast<double>(std::fabs(b[k])));
    }
    worst = std::max(worst, num / den);
  }
  return worst;
}

class Repack : public ::testing::TestWithParam<std::tuple<const char*, DType>> {};

// Every matmul weight becomes the active table's layout (AVX-512: R16, 16 rows interleaved; AVX2: G8; the
// tied output head stays the embedding table as stored), the file's records do not change, and the logits
// equal the file layout's: bit for bit where the kernels read both layouts in the same order (AVX2's Q4_0),
// else within the f32 summation-order noise of two correct kernels (AVX2's Q8_0: column order against
// grouped; AVX-512: 16 rows per vector against one row's blocks per vector; bound 1e-5 of the largest
// logit, observed 1.7e-7).
TEST_P(Repack, MatmulWeightsRepackedWithTheSameLogits) {
  IsaGuard guard;
  const auto [layout, type] = GetParam();
  const kernels::Isa isa = kernels::detect_isa();
  const DType packed = isa == kernels::Isa::kAvx512
                           ? (type == DType::Q4_0 ? DType::Q4_0_R16 : DType::Q8_0_R16)
                           : (type == DType::Q4_0 ? DType::Q4_0_G8 : DType::Q8_0_G8);
  const bool simd = isa != kernels::Isa::kScalar;  // else nothing is repacked
  const bool same_order = type == DType::Q4_0 && isa == kernels::Isa::kAvx2;
  for (bool tied : {false, true}) {
    SCOPED_TRACE(std::string(layout) + " " + std::string(dtype_name(type)) + (tied ? " tied" : ""));
    const std::string path = write_model(layout, type, tied);
    LoadOptions on;
    on.repack = true;
    auto plain = load_model(path);
    auto repacked = load_model(path, on);
    ASSERT_TRUE(plain.ok() && repacked.ok());
    const Model &a = **plain, &b = **repacked;
    EXPECT_EQ(a.repacked_tensors, 0);
    const DType want = simd ? packed : type;
    EXPECT_EQ(b.repacked_tensors, simd ? 2 * (4 + 3 * 4) + (tied ? 0 : 1) : 0);
    for (const TensorView* w : matmul_views(b)) EXPECT_EQ(w->dtype, want);
    EXPECT_EQ(b.output.dtype, tied ? type : want);
    EXPECT_EQ(b.tok_embd.dtype, type);  // read by get_rows as stored
    for (const TensorRecord& r : b.tensors) {
      if (r.name.find("norm") == std::string::npos && r.name.find("gate_inp") == std::string::npos) {
        EXPECT_EQ(r.dtype, type) << r.name << ": the records describe the file";
      }
    }
    const std::vector<float> la = logits_of(a), lb = logits_of(b);
    if (same_order) {
      EXPECT_EQ(0, std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)));
    } else {
      EXPECT_LE(max_rel_diff(lb, la, a.config.vocab_size), 1e-5);
    }
    // The scalar kernels read the repacked layouts too (a table switch after loading), bit for bit.
    kernels::set_isa(kernels::Isa::kScalar);
    const std::vector<float> sa = logits_of(a), sb = logits_of(b);
    EXPECT_EQ(0, std::memcmp(sa.data(), sb.data(), sa.size() * sizeof(float)));
    EXPECT_LE(max_rel_diff(lb, sa, a.config.vocab_size), 1e-5) << "repacked, fast kernels vs scalar";
    // Under them nothing is repacked: their kernels are no slower on the file's layout.
    auto scalar = load_model(path, on);
    ASSERT_TRUE(scalar.ok());
    EXPECT_EQ((*scalar)->repacked_tensors, 0);
    kernels::set_isa(kernels::detect_isa());
  }
}

// K-quant weights move to huge pages: every matmul view leaves the file mapping for the one buffer, as
// stored (Q6_K; Q4_K on AVX2) or in the active table's layout (Q4_K on AVX-512: Q4_K_R16, whose kernels sum
// the same integers in the same float steps), and the logits are the mapped file's bit for bit.
TEST(Repack, KQuantWeightsMoveToHugePages) {
  for (DType type : {DType::Q4_K, DType::Q6_K}) {
    SCOPED_TRACE(std::string(dtype_name(type)));
    const std::string path = write_model("gguf-merged", type, false);
    LoadOptions on;
    on.repack = true;
    auto plain = load_model(path);
    auto moved = load_model(path, on);
    ASSERT_TRUE(plain.ok() && moved.ok());
    const Model &a = **plain, &b = **moved;
    EXPECT_EQ(a.huge_page_bytes, 0);
    EXPECT_TRUE(b.weights_note.empty()) << b.weights_note;
    const std::vector<const TensorView*> va = matmul_views(a), vb = matmul_views(b);
    ASSERT_EQ(va.size(), vb.size());
    int64_t bytes = 0, changed = 0;
    for (size_t i = 0; i < va.size(); ++i) {
      const DType want = kernels::preferred_layout(type, va[i]->rows(), va[i]->cols());
      EXPECT_EQ(vb[i]->dtype, want);
      EXPECT_NE(va[i]->data, vb[i]->data);
      changed += want != type;
      std::vector<uint8_t> back(static_cast<const uint8_t*>(vb[i]->data),
                                static_cast<const uint8_t*>(vb[i]->data) + vb[i]->nbytes());
      if (want != type) repack(want, type, back.data(), back.data(), vb[i]->rows(), vb[i]->cols());
      EXPECT_EQ(0, std::memcmp(va[i]->data, back.data(), va[i]->nbytes()));
      bytes += static_cast<int64_t>(vb[i]->nbytes());
    }
    changed += b.output.dtype != a.output.dtype;
    EXPECT_EQ(b.repacked_tensors, changed);
    if (kernels::detect_isa() != kernels::Isa::kAvx512) {
      EXPECT_EQ(changed, 0);
    }
    bytes += static_cast<int64_t>(b.output.nbytes());
    EXPECT_GE(b.huge_page_bytes, bytes);
    EXPECT_LT(b.huge_page_bytes, bytes + 64 * static_cast<int64_t>(va.size() + 1));  // 64-byte alignment
    const std::vector<float> la = logits_of(a), lb = logits_of(b);
    EXPECT_EQ(0, std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)));
  }
}

// A buffer that would not fit leaves every weight in the file mapping, as stored, with a note that says
// why; the logits are the plain load's bit for bit.
TEST(Repack, WeightsStayMappedWhenTheBufferWouldNotFit) {
  const std::string path = write_model("gguf-merged", DType::Q4_0, false);
  LoadOptions tight;
  tight.repack = true;
  tight.place_limit = 1 << 20;  // 1 MiB: less than the weights
  auto plain = load_model(path);
  auto kept = load_model(path, tight);
  ASSERT_TRUE(plain.ok() && kept.ok());
  const Model &a = **plain, &b = **kept;
  EXPECT_EQ(b.repacked_tensors, 0);
  EXPECT_EQ(b.huge_page_bytes, 0);
  EXPECT_NE(b.weights_note.find("left in the file mapping"), std::string::npos) << b.weights_note;
  EXPECT_NE(b.weights_note.find("over the 1 MiB available"), std::string::npos) << b.weights_note;
  const std::vector<const TensorView*> va = matmul_views(a), vb = matmul_views(b);
  for (size_t i = 0; i < va.size(); ++i) {
    EXPECT_EQ(vb[i]->dtype, DType::Q4_0);
    EXPECT_EQ(0, std::memcmp(va[i]->data, vb[i]->data, va[i]->nbytes()));
  }
  const std::vector<float> la = logits_of(a), lb = logits_of(b);
  EXPECT_EQ(0, std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)));
}

INSTANTIATE_TEST_SUITE_P(LayoutsAndTypes, Repack,
                         ::testing::Combine(::testing::Values("gguf-merged", "gguf-legacy"),
                                            ::testing::Values(DType::Q4_0, DType::Q8_0)));

}  // namespace
}  // namespace mixtral
