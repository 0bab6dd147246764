// quant_dump OUT_DIR: for every block type, blocks of seeded random bytes (their fp16/f32 scale fields
// replaced by finite random values) and our dequantize_row of them: OUT_DIR/<type>.bin (the blocks) and
// OUT_DIR/<type>.f32 (little-endian float32 values). test_quant_layouts.py decodes the same bytes with the
// independent NumPy dequantisers of tests/reference/reference.py and compares. Also our quantizers of
// Q4_0, IQ4_NL and IQ4_XS on gaussian rows, with and without importance weights (see the end of main).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tensor/quant.h"

namespace {

using mixtral::DType;

struct Layout {
  DType type;
  std::vector<int> half_offsets;  // fp16 fields inside a block
  int f32_offset;                 // an f32 field (Q8_K's d), or -1
  int split_half_offset = -1;     // IQ1_M: an fp16 kept in the top nibbles of 4 u16 words from here
};

bool write_file(const std::string& path, const void* data, size_t bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return false;
  const bool ok = std::fwrite(data, 1, bytes, f) == bytes;
  return std::fclose(f) == 0 && ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: quant_dump OUT_DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  const std::vector<Layout> layouts = {
      {DType::Q4_0, {0}, -1},
      {DType::Q8_0, {0}, -1},
      {DType::Q4_1, {0, 2}, -1},
      {DType::Q5_0, {0}, -1},
      {DType::Q5_1, {0, 2}, -1},
      {DType::Q2_K, {80, 82}, -1},
      {DType::Q3_K, {108}, -1},
      {DType::Q4_K, {0, 2}, -1},
      {DType::Q5_K, {0, 2}, -1},
      {DType::Q6_K, {208}, -1},
      {DType::Q8_K, {}, 0},
      // The i-quants: every index, sign and scale code is valid, so only d needs to be a finite value.
      {DType::IQ2_XXS, {0}, -1},
      {DType::IQ2_XS, {0}, -1},
      {DType::IQ2_S, {0}, -1},
      {DType::IQ3_XXS, {0}, -1},
      {DType::IQ3_S, {0}, -1},
      {DType::IQ1_S, {0}, -1},
      {DType::IQ1_M, {}, -1, 48},
      {DType::IQ4_NL, {0}, -1},
      {DType::IQ4_XS, {0}, -1},
  };
  std::mt19937 rng(20261127);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> mag(-3.0f, 3.0f);
  for (const Layout& l : layouts) {
    const auto& tr = mixtral::traits(l.type);
    const int64_t blocks = 48, n = blocks * tr.block_size;
    std::vector<uint8_t> raw(static_cast<size_t>(blocks) * tr.block_bytes);  // [blocks, block_bytes]
    for (auto& b : raw) b = static_cast<uint8_t>(byte(rng));
    for (int64_t b = 0; b < blocks; ++b) {
      uint8_t* blk = raw.data() + b * tr.block_bytes;
      // |v| in [2^-3, 2^3), either sign: finite, normal, and varied.
      auto random_half = [&] {
        const float v = std::ldexp(1.0f + std::fabs(mag(rng)) / 3.0f, static_cast<int>(mag(rng))) *
                        (byte(rng) & 1 ? -1.0f : 1.0f);
        return mixtral::f32_to_fp16(v);
      };
      for (int off : l.half_offsets) {
        const uint16_t h = random_half();
        std::memcpy(blk + off, &h, 2);
      }
      if (l.split_half_offset >= 0) {
        const uint16_t h = random_half();
        for (int w = 0; w < 4; ++w) {  // nibble w of h into the top nibble of word w
          uint16_t word;
          std::memcpy(&word, blk + l.split_half_offset + 2 * w, 2);
          word = static_cast<uint16_t>((word & 0x0fff) | ((h >> (4 * w)) & 0xf) << 12);
          std::memcpy(blk + l.split_half_offset + 2 * w, &word, 2);
        }
      }
      if (l.f32_offset >= 0) {
        const float v = mag(rng) * 0.01f;
        std::memcpy(blk + l.f32_offset, &v, 4);
      }
    }
    std::vector<float> out(static_cast<size_t>(n));  // [n]
    mixtral::dequantize_row(l.type, raw.data(), out.data(), n);
    const std::string name(mixtral::dtype_name(l.type));
    if (!write_file(dir + "/" + name + ".bin", raw.data(), raw.size()) ||
        !write_file(dir + "/" + name + ".f32", out.data(), out.size() * 4)) {
      std::fprintf(stderr, "quant_dump: cannot write %s/%s.*\n", dir.c_str(), name.c_str());
      return 1;
    }
  }
  // Our quantizers on seeded gaussian rows: gauss.f32 (the input, [kRows, kCols]), qw.f32 (importance
  // weights, [kCols], log-normal), and per type <type>.quant.bin / .quant.f32 (quantize_row and our
  // dequantize_row of it) and <type>.wquant.bin / .wquant.f32 (quantize_row_weighted with qw).
  constexpr int64_t kRows = 64, kCols = 1024;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(kRows * kCols)), qw(static_cast<size_t>(kCols));
  for (auto& v : x) v = nd(rng);
  for (auto& v : qw) v = std::exp(2.0f * nd(rng));
  if (!write_file(dir + "/gauss.f32", x.data(), x.size() * 4) ||
      !write_file(dir + "/qw.f32", qw.data(), qw.size() * 4))
    return 1;
  for (DType t : {DType::Q4_0, DType::IQ4_NL, DType::IQ4_XS}) {
    const size_t rb = mixtral::row_bytes(t, kCols);
    for (const bool weighted : {false, true}) {
      std::vector<uint8_t> q(rb * kRows);  // [kRows, rb]
      std::vector<float> y(x.size());      // [kRows, kCols]
      for (int64_t r = 0; r < kRows; ++r) {
        mixtral::quantize_row_weighted(t, x.data() + r * kCols, q.data() + r * rb, kCols,
                                       weighted ? qw.data() : nullptr);
        mixtral::dequantize_row(t, q.data() + r * rb, y.data() + r * kCols, kCols);
      }
      const std::string base =
          dir + "/" + std::string(mixtral::dtype_name(t)) + (weighted ? ".wquant" : ".quant");
      if (!write_file(base + ".bin", q.data(), q.size()) ||
          !write_file(base + ".f32", y.data(), y.size() * 4)) {
        std::fprintf(stderr, "quant_dump: cannot write %s.*\n", base.c_str());
        return 1;
      }
    }
  }
  return 0;
}
