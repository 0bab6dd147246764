// Importance matrix files (src/io/imatrix.h): both formats written and read back, a .dat laid out byte by
// byte as llama.cpp's save_imatrix_legacy writes it, the weights llama-quantize derives, and bad files
// rejected with one line naming the file and the entry, tensor or key.
#include "io/imatrix.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "tensor/quant.h"
#include "tensor/quant_k.h"

namespace mixtral {
namespace {

namespace fs = std::filesystem;

class ImatrixTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("imatrix_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  void write_bytes(const std::string& p, const std::vector<uint8_t>& b) const {
    std::ofstream f(p, std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
  // The error of reading p, which must fail.
  std::string read_error(const std::string& p) const {
    auto r = read_imatrix(p);
    EXPECT_FALSE(r.ok()) << p;
    if (r.ok()) return "";
    EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find(p), std::string::npos) << r.error().message;
    return r.error().message;
  }

  fs::path dir_;
};

// Two experts of 3 columns (one without tokens) and a dense 2-column weight.
Imatrix sample() {
  Imatrix im;
  im.datasets = {"train.txt"};
  im.chunk_count = 3;
  im.chunk_size = 4;
  im.entries["blk.0.attn_q.weight"] = {{8.0f, 2.0f}, {12}};
  im.entries["blk.0.ffn_down_exps.weight"] = {{1.0f, 4.0f, 9.0f, 0.0f, 0.0f, 0.0f}, {5, 0}};
  return im;
}

// Little-endian bytes of a .dat as llama.cpp writes it.
struct DatBytes {
  std::vector<uint8_t> b;
  DatBytes& i32(int32_t v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + 4);
    return *this;
  }
  DatBytes& f32(float v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + 4);
    return *this;
  }
  DatBytes& str(const std::string& s) {
    i32(static_cast<int32_t>(s.size()));
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
};

TEST_F(ImatrixTest, GgufRoundTrip) {
  const Imatrix im = sample();
  ASSERT_TRUE(write_imatrix_gguf(im, path("a.gguf")).ok());
  auto r = read_imatrix(path("a.gguf"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_FALSE(r->legacy);
  EXPECT_EQ(r->datasets, im.datasets);
  EXPECT_EQ(r->chunk_count, 3);
  EXPECT_EQ(r->chunk_size, 4);
  ASSERT_EQ(r->entries.size(), 2u);
  for (const auto& [name, e] : im.entries) {
    ASSERT_TRUE(r->entries.count(name)) << name;
    EXPECT_EQ(r->entries.at(name).sums, e.sums) << name;
    EXPECT_EQ(r->entries.at(name).counts, e.counts) << name;
  }
  // The tensors as llama.cpp lays them out: in_sum2 ne [cols, n_mat], counts ne [1, n_mat], F32, name order.
  auto g = GgufFile::open(path("a.gguf"));
  ASSERT_TRUE(g.ok());
  const std::vector<std::string> order = {"blk.0.attn_q.weight.in_sum2", "blk.0.attn_q.weight.counts",
                                          "blk.0.ffn_down_exps.weight.in_sum2",
                                          "blk.0.ffn_down_exps.weight.counts"};
  ASSERT_EQ(g->tensors().size(), order.size());
  for (size_t i = 0; i < order.size(); ++i) EXPECT_EQ(g->tensors()[i].name, order[i]);
  EXPECT_EQ(g->tensors()[2].ne, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(g->tensors()[3].ne, (std::vector<int64_t>{1, 2}));
  float counts[2];
  std::memcpy(counts, g->tensors()[3].data, sizeof counts);
  EXPECT_EQ(counts[0], 5.0f);
  EXPECT_EQ(counts[1], 0.0f);
  EXPECT_EQ(**g->get_string("general.type"), "imatrix");
  EXPECT_EQ(g->metadata().at("imatrix.chunk_count").type, GgufType::kU32);
  EXPECT_EQ(g->metadata().at("imatrix.chunk_size").type, GgufType::kU32);

  // llama-quantize's weights: sum / count per matrix, 1 for the expert without tokens.
  const std::vector<float> wd = imatrix_weights(*r, r->entries.at("blk.0.ffn_down_exps.weight"));
  EXPECT_EQ(wd, (std::vector<float>{0.2f, 0.8f, 1.8f, 1.0f, 1.0f, 1.0f}));
  EXPECT_EQ(imatrix_weights(*r, r->entries.at("blk.0.attn_q.weight")),
            (std::vector<float>{8.0f / 12, 2.0f / 12}));
}

TEST_F(ImatrixTest, DatRoundTrip) {
  ASSERT_TRUE(write_imatrix_dat(sample(), path("a.dat")).ok());
  auto r = read_imatrix(path("a.dat"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(r->legacy);
  EXPECT_EQ(r->datasets, std::vector<std::string>{"train.txt"});
  EXPECT_EQ(r->chunk_count, 3);
  EXPECT_EQ(r->chunk_size, 0);
  // ncall = ceil(max count / chunk size): 12 / 4 = 3 for attn_q, ceil(5 / 4) = 2 for the experts; values
  // (sum / count) * ncall, 1 * ncall for the expert without tokens.
  const ImatrixEntry& q = r->entries.at("blk.0.attn_q.weight");
  EXPECT_EQ(q.counts, std::vector<int64_t>{3});
  EXPECT_FLOAT_EQ(q.sums[0], 8.0f / 12 * 3);
  EXPECT_FLOAT_EQ(q.sums[1], 2.0f / 12 * 3);
  const ImatrixEntry& d = r->entries.at("blk.0.ffn_down_exps.weight");
  EXPECT_EQ(d.counts, std::vector<int64_t>{2});
  const std::vector<float> want = {0.4f, 1.6f, 3.6f, 2.0f, 2.0f, 2.0f};
  ASSERT_EQ(d.sums.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_FLOAT_EQ(d.sums[i], want[i]) << i;
  // The weights are the same as from the GGUF: value / ncall.
  const std::vector<float> wd = imatrix_weights(*r, d);
  const std::vector<float> wg = {0.2f, 0.8f, 1.8f, 1.0f, 1.0f, 1.0f};
  for (size_t i = 0; i < wg.size(); ++i) EXPECT_FLOAT_EQ(wd[i], wg[i]) << i;
  // A legacy matrix written again keeps its values.
  ASSERT_TRUE(write_imatrix_dat(*r, path("b.dat")).ok());
  auto r2 = read_imatrix(path("b.dat"));
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->entries.at("blk.0.ffn_down_exps.weight").sums, d.sums);
  EXPECT_EQ(r2->entries.at("blk.0.attn_q.weight").counts, std::vector<int64_t>{3});
}

TEST_F(ImatrixTest, ReadsLlamaCppDatBytes) {
  DatBytes d;
  d.i32(2);
  d.str("blk.0.attn_k.weight").i32(4).i32(2).f32(2.0f).f32(6.0f);
  d.str("blk.0.attn_v.weight").i32(0).i32(1).f32(3.0f);
  d.i32(7).str("data.txt");
  write_bytes(path("x.dat"), d.b);
  auto r = read_imatrix(path("x.dat"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(r->legacy);
  EXPECT_EQ(r->chunk_count, 7);
  EXPECT_EQ(r->datasets, std::vector<std::string>{"data.txt"});
  EXPECT_EQ(imatrix_weights(*r, r->entries.at("blk.0.attn_k.weight")), (std::vector<float>{0.5f, 1.5f}));
  // ncall 0: the values as they are (llama-quantize does the same).
  EXPECT_EQ(imatrix_weights(*r, r->entries.at("blk.0.attn_v.weight")), std::vector<float>{3.0f});

  // The trailer is optional.
  DatBytes bare;
  bare.i32(1).str("w").i32(1).i32(1).f32(1.0f);
  write_bytes(path("bare.dat"), bare.b);
  auto rb = read_imatrix(path("bare.dat"));
  ASSERT_TRUE(rb.ok()) << rb.error().message;
  EXPECT_TRUE(rb->datasets.empty());
  EXPECT_EQ(rb->chunk_count, 0);
}

TEST_F(ImatrixTest, FormatByContentNotName) {
  ASSERT_TRUE(write_imatrix_gguf(sample(), path("looks-legacy.dat")).ok());
  auto r = read_imatrix(path("looks-legacy.dat"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_FALSE(r->legacy);
}

TEST_F(ImatrixTest, BadDatFiles) {
  struct Case {
    const char* name;
    DatBytes bytes;
    const char* needle;
  };
  std::vector<Case> cases;
  cases.push_back({"empty.dat", DatBytes{}, "entry count"});
  cases.push_back({"zero.dat", DatBytes{}.i32(0).i32(0).i32(0).i32(0).i32(0), "entry count 0"});
  cases.push_back({"huge.dat", DatBytes{}.i32(1000000).i32(1), "entry count 1000000"});
  cases.push_back({"trunc.dat", DatBytes{}.i32(1).str("blk.0.attn_q.weight").i32(1).i32(4).f32(1).f32(1),
                   "'blk.0.attn_q.weight' values"});
  cases.push_back({"namelen.dat", DatBytes{}.i32(1).i32(1000).i32(0).i32(0).i32(0), "entry 0 name"});
  cases.push_back({"nval.dat", DatBytes{}.i32(1).str("w").i32(1).i32(-5).f32(1), "value count -5"});
  cases.push_back({"ncall.dat", DatBytes{}.i32(1).str("w").i32(-1).i32(1).f32(1), "ncall -1"});
  cases.push_back({"nan.dat", DatBytes{}.i32(1).str("w").i32(1).i32(1).f32(NAN), "value 0"});
  cases.push_back({"neg.dat", DatBytes{}.i32(1).str("w").i32(1).i32(1).f32(-1), "value 0"});
  cases.push_back({"twice.dat", DatBytes{}.i32(2).str("w").i32(1).i32(1).f32(1).str("w").i32(1).i32(1).f32(1),
                   "appears twice"});
  cases.push_back({"tail.dat", DatBytes{}.i32(1).str("w").i32(1).i32(1).f32(1).i32(2).str("d").i32(9),
                   "bytes after the dataset name"});
  cases.push_back(
      {"dslen.dat", DatBytes{}.i32(1).str("w").i32(1).i32(1).f32(1).i32(2).i32(50), "dataset name"});
  for (const Case& c : cases) {
    write_bytes(path(c.name), c.bytes.b);
    const std::string err = read_error(path(c.name));
    EXPECT_NE(err.find(c.needle), std::string::npos) << c.name << ": " << err;
  }
}

TEST_F(ImatrixTest, BadGgufFiles) {
  const auto f32_tensor = [](const std::string& name, std::vector<int64_t> shape, std::vector<float> v) {
    auto data = std::make_shared<std::vector<float>>(std::move(v));
    return GgufTensorSpec{name, DType::F32, std::move(shape),
                          [data](uint8_t* dst, size_t n) { std::memcpy(dst, data->data(), n); }};
  };
  // A valid file's pieces, then each case breaks one.
  const auto base = [&](GgufWriter& w, bool meta = true) {
    w.set_string("general.type", "imatrix");
    if (meta) {
      w.set_string_array("imatrix.datasets", {"t.txt"});
      w.set_u32("imatrix.chunk_count", 1);
      w.set_u32("imatrix.chunk_size", 8);
    }
  };
  struct Case {
    const char* name;
    std::function<void(GgufWriter&)> build;
    const char* needle;
  };
  const std::vector<Case> cases = {
      {"model.gguf",
       [&](GgufWriter& w) {
         base(w);
         w.set_string("general.type", "model");
         w.add_tensor(f32_tensor("x.in_sum2", {1, 2}, {1, 1}));
       },
       "general.type"},
      {"nometa.gguf",
       [&](GgufWriter& w) {
         base(w, false);
         w.add_tensor(f32_tensor("x.in_sum2", {1, 2}, {1, 1}));
         w.add_tensor(f32_tensor("x.counts", {1, 1}, {1}));
       },
       "imatrix.datasets"},
      {"nosize.gguf",
       [&](GgufWriter& w) {
         w.set_string_array("imatrix.datasets", {"t.txt"});
         w.set_u32("imatrix.chunk_count", 1);
         w.add_tensor(f32_tensor("x.in_sum2", {1, 2}, {1, 1}));
         w.add_tensor(f32_tensor("x.counts", {1, 1}, {1}));
       },
       "imatrix.chunk_size"},
      {"badtype.gguf",
       [&](GgufWriter& w) {
         base(w);
         w.set_string("imatrix.chunk_size", "eight");
         w.add_tensor(f32_tensor("x.in_sum2", {1, 2}, {1, 1}));
         w.add_tensor(f32_tensor("x.counts", {1, 1}, {1}));
       },
       "imatrix.chunk_size"},
      {"none.gguf",
       [&](GgufWriter& w) {
         base(w);
         w.add_tensor(f32_tensor("blk.0.attn_q.weight", {1, 2}, {1, 1}));
       },
       "no imatrix entries"},
      {"nocounts.gguf",
       [&](GgufWriter& w) {
         base(w);
         w.add_tensor(f32_tensor("blk.0.attn_q.weight.in_sum2", {1, 2}, {1, 1}));
       },
       "'blk.0.attn_q.weight': has .in_sum2 but no .counts"},
      {"nosums.gguf",
       [&](GgufWriter& w) {
         base(w);
         w.add_tensor(f32_tensor("blk.0.attn_q.weight.counts", {1, 1}, {1}));
       },
       "'blk.0.attn_q.weight': has .counts but no .in_sum2"},
      {"f16.gguf",
       [&](GgufWriter& w) {
         base(w);
         w.add_tensor({"w.in_sum2", DType::F16, {1, 2}, [](uint8_t* d, size_t n) { std::memset(d, 0, n); }});
         w.add_tensor(f32_tensor("w.counts", {1, 1}, {1}));
       },
       "is not F32"},
      {"split.gguf",
       [&](GgufWriter& w) {
         base(w);
         w.add_tensor(f32_tensor("w.in_sum2", {1, 3}, {1, 1, 1}));
         w.add_tensor(f32_tensor("w.counts", {2, 1}, {1, 1}));
       },
       "3 sums do not split into 2"},
      {"rows.gguf",
       [&](GgufWriter& w) {
         base(w);
         w.add_tensor(f32_tensor("w.in_sum2", {1, 4}, {1, 1, 1, 1}));  // ne [4, 1]: one row for 2 counts
         w.add_tensor(f32_tensor("w.counts", {2, 1}, {1, 1}));
       },
       "1 rows for 2 counts"},
      {"fraction.gguf",
       [&](GgufWriter& w) {
         base(w);
         w.add_tensor(f32_tensor("w.in_sum2", {1, 2}, {1, 1}));
         w.add_tensor(f32_tensor("w.counts", {1, 1}, {2.5f}));
       },
       "count 0 is 2.5"},
      {"negsum.gguf",
       [&](GgufWriter& w) {
         base(w);
         w.add_tensor(f32_tensor("w.in_sum2", {1, 2}, {1, -1}));
         w.add_tensor(f32_tensor("w.counts", {1, 1}, {2}));
       },
       "sum 1 is -1"},
      {"inf.gguf",
       [&](GgufWriter& w) {
         base(w);
         w.add_tensor(f32_tensor("w.in_sum2", {1, 2}, {INFINITY, 1}));
         w.add_tensor(f32_tensor("w.counts", {1, 1}, {2}));
       },
       "sum 0 is inf"},
  };
  for (const Case& c : cases) {
    GgufWriter w;
    c.build(w);
    ASSERT_TRUE(w.write(path(c.name)).ok()) << c.name;
    const std::string err = read_error(path(c.name));
    EXPECT_NE(err.find(c.needle), std::string::npos) << c.name << ": " << err;
  }
  // A GGUF cut short: the GGUF reader's error, naming the file.
  ASSERT_TRUE(write_imatrix_gguf(sample(), path("ok.gguf")).ok());
  fs::resize_file(path("ok.gguf"), fs::file_size(path("ok.gguf")) / 2);
  read_error(path("ok.gguf"));
  // Not there at all.
  EXPECT_NE(read_error(path("missing.gguf")).find("cannot open"), std::string::npos);
}

TEST_F(ImatrixTest, WriterRefusesWhatItCannotWrite) {
  Imatrix im;
  EXPECT_FALSE(write_imatrix_gguf(im, path("e.gguf")).ok());  // no entries
  im.entries["w"] = {{1, 2, 3}, {1, 1}};                      // 3 sums for 2 counts
  auto st = write_imatrix_gguf(im, path("e.gguf"));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("'w'"), std::string::npos) << st.error().message;
  im.entries["w"] = {{1, 2}, {1, 1}};
  im.chunk_size = 0;  // a .dat of a GGUF-layout matrix needs the chunk size for ncall
  EXPECT_FALSE(write_imatrix_dat(im, path("e.dat")).ok());
  EXPECT_FALSE(fs::exists(path("e.gguf")));
  EXPECT_FALSE(fs::exists(path("e.dat")));
}

// The K-quants with an importance matrix: the output error of a matmul over activations with per-column mean
// squares qw is sum_j qw_j (x_j - q(x)_j)^2 per row (for uncorrelated activations); quantizing with qw must
// lower it clearly against the same quantizer without (columns' importance spread over e^(+-4)).
TEST(ImatrixQuant, WeightedKQuantsLowerTheWeightedError) {
  using Quantize = void (*)(const float*, void*, int64_t, const float*);
  using Dequantize = void (*)(const void*, float*, int64_t);
  struct Type {
    const char* name;
    Quantize quantize;
    Dequantize dequantize;
    size_t block_bytes;
    double max_ratio;  // weighted error with qw / without, at most (measured: 0.30, 0.52, 0.39, 0.54, 0.53)
  };
  const Type types[] = {
      {"Q2_K", detail::quantize_q2_k, detail::dequantize_q2_k, sizeof(BlockQ2_K), 0.5},
      {"Q3_K", detail::quantize_q3_k, detail::dequantize_q3_k, sizeof(BlockQ3_K), 0.7},
      {"Q4_K", detail::quantize_q4_k, detail::dequantize_q4_k, sizeof(BlockQ4_K), 0.7},
      {"Q5_K", detail::quantize_q5_k, detail::dequantize_q5_k, sizeof(BlockQ5_K), 0.7},
      {"Q6_K", detail::quantize_q6_k, detail::dequantize_q6_k, sizeof(BlockQ6_K), 0.7},
  };
  constexpr int64_t kCols = 4 * kQK_K, kRows = 16;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(kRows * kCols)),
      qw(static_cast<size_t>(kCols));  // [rows, cols], [cols]
  for (float& v : x) v = normal(rng);
  for (float& v : qw) v = std::exp(2.0f * normal(rng));
  for (int64_t j = 0; j < 32; ++j) qw[static_cast<size_t>(j)] = 0.0f;  // a sub-block no activation reached
  for (const Type& t : types) {
    std::vector<uint8_t> q(t.block_bytes * kCols / kQK_K);  // [one row's blocks]
    std::vector<float> y(static_cast<size_t>(kCols));       // [cols]
    double err[2] = {0.0, 0.0};                             // [plain, weighted] sum of qw d^2
    double unseen[2] = {0.0, 0.0};  // [plain, weighted] sum of d^2 over the sub-block of importance 0
    for (int64_t r = 0; r < kRows; ++r) {
      const float* row = x.data() + r * kCols;
      for (int k = 0; k < 2; ++k) {
        t.quantize(row, q.data(), kCols, k == 1 ? qw.data() : nullptr);
        t.dequantize(q.data(), y.data(), kCols);
        for (int64_t j = 0; j < kCols; ++j) {
          const double d = static_cast<double>(row[j]) - y[static_cast<size_t>(j)];
          err[k] += qw[static_cast<size_t>(j)] * d * d;
          if (j < 32) unseen[k] += d * d;
        }
      }
    }
    const double ratio = err[1] / err[0];
    std::printf(
        "%s: weighted error with the importance matrix / without = %.3f; the importance-0 sub-block's "
        "error %.3f / %.3f\n",
        t.name, ratio, unseen[1], unseen[0]);
    // That sub-block is fitted as if all its columns mattered alike: not collapsed to zero.
    EXPECT_LT(unseen[1], 2.0 * unseen[0]) << t.name;
    EXPECT_LT(ratio, t.max_ratio) << t.name;
  }
}

}  // namespace
}  // namespace mixtral
