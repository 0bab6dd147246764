#include "tensor/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "core/check.h"
#include "tensor/quant_iq.h"
#include "tensor/quant_k.h"

namespace mixtral {

float fp16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      uint32_t m = man;
      do {
        ++e;
        m <<= 1;
      } while ((m & 0x400u) == 0);
      u = sign | ((127 - 15 - e) << 23) | ((m & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_fp16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (absu >= 0x477ff000u) return sign | 0x7c00u;  // overflows to inf after rounding
  if (absu < 0x38800000u) {                        // subnormal half or zero
    if (absu < 0x33000000u) return sign;           // below half of the smallest subnormal
    const uint32_t exp = absu >> 23;
    const uint32_t man = (absu & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exp;  // 14..24
    uint32_t half = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1);
    const uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return sign | static_cast<uint16_t>(half);
  }
  uint32_t v = absu - 0x38000000u;  // rebias exponent 127 -> 15
  v += 0xfffu + ((v >> 13) & 1u);   // round to nearest even
  return sign | static_cast<uint16_t>(v >> 13);
}

namespace {

// Moves the 4-byte words of 8 blocks (Block: kWords words of values after a 2-byte fp16 scale) into a
// G8 group (Group: the 8 blocks' words, word slot(m) * 8 + j holding word m of block j, then the 8 scales),
// or back (to_group false). src and dst may be the same memory: each group goes through a copy.
template <class Block, class Group, int kWords, int (*kSlot)(int)>
void regroup(const void* src, void* dst, int64_t n_groups, bool to_group) {
  static_assert(sizeof(Group) == kG8Blocks * sizeof(Block) && sizeof(Block) == 2 + 4 * kWords);
  for (int64_t g = 0; g < n_groups; ++g) {
    Block b[kG8Blocks];  // [8]
    Group o;
    const size_t at = static_cast<size_t>(g) * sizeof(Group);
    if (to_group) std::memcpy(b, static_cast<const uint8_t*>(src) + at, sizeof(b));
    if (!to_group) std::memcpy(&o, static_cast<const uint8_t*>(src) + at, sizeof(o));
    for (int j = 0; j < kG8Blocks; ++j) {
      if (to_group) o.d[j] = b[j].d;
      if (!to_group) b[j].d = o.d[j];
      for (int m = 0; m < kWords; ++m) {
        auto* in_group = reinterpret_cast<uint8_t*>(o.qs) + 4 * (kG8Blocks * kSlot(m) + j);
        auto* in_block = reinterpret_cast<uint8_t*>(b[j].qs) + 4 * m;
        if (to_group) std::memcpy(in_group, in_block, 4);
        if (!to_group) std::memcpy(in_block, in_group, 4);
      }
    }
    if (to_group) std::memcpy(static_cast<uint8_t*>(dst) + at, &o, sizeof(o));
    if (!to_group) std::memcpy(static_cast<uint8_t*>(dst) + at, b, sizeof(b));
  }
}

// Q4_0: word k of the packed nibbles goes to vector k (the kernels split low and high nibbles later).
int q4_slot(int m) {
  return m;
}
// Q8_0: word m holds values 4m .. 4m + 3 = 16h + 4k .. with h = m / 4, k = m % 4: vector 2k + h.
int q8_slot(int m) {
  return 2 * (m % 4) + m / 4;
}

}  // namespace

void repack_q4_0_g8(const BlockQ4_0* src, BlockQ4_0G8* dst, int64_t n_groups) {
  regroup<BlockQ4_0, BlockQ4_0G8, 4, q4_slot>(src, dst, n_groups, true);
}
void unpack_q4_0_g8(const BlockQ4_0G8* src, BlockQ4_0* dst, int64_t n_groups) {
  regroup<BlockQ4_0, BlockQ4_0G8, 4, q4_slot>(src, dst, n_groups, false);
}
void repack_q8_0_g8(const BlockQ8_0* src, BlockQ8_0G8* dst, int64_t n_groups) {
  regroup<BlockQ8_0, BlockQ8_0G8, 8, q8_slot>(src, dst, n_groups, true);
}
void unpack_q8_0_g8(const BlockQ8_0G8* src, BlockQ8_0* dst, int64_t n_groups) {
  regroup<BlockQ8_0, BlockQ8_0G8, 8, q8_slot>(src, dst, n_groups, false);
}

namespace {

// Interleaves the 16 file rows at src (Block: the file type's, kWords 4-byte words of values after the
// fp16 scale) into one R16 row group at dst, or back (to_group false); kFlip is xor-ed into every value
// byte on the way (0x80 for Q8_0's unsigned storage, 0 for Q4_0). src and dst may be the same memory: the
// group goes through a copy.
template <class Block, class Group, int kWords, uint8_t kFlip>
void interleave16(const void* src, void* dst, int64_t cols, bool to_group) {
  static_assert(sizeof(Group) == kR16Rows * sizeof(Block) && sizeof(Block) == 2 + 4 * kWords);
  const int64_t nb = cols / kQK8_0;  // blocks per row (32 values each for both types)
  const size_t bytes = static_cast<size_t>(nb) * sizeof(Group);
  std::vector<uint8_t> copy(static_cast<const uint8_t*>(src), static_cast<const uint8_t*>(src) + bytes);
  for (int64_t b = 0; b < nb; ++b) {
    auto* g = reinterpret_cast<Group*>(to_group ? static_cast<uint8_t*>(dst) : copy.data()) + b;
    for (int r = 0; r < kR16Rows; ++r) {
      auto* blk = reinterpret_cast<Block*>(to_group ? copy.data() : static_cast<uint8_t*>(dst)) + r * nb + b;
      if (to_group) g->d[r] = blk->d;
      if (!to_group) blk->d = g->d[r];
      for (int m = 0; m < kWords; ++m) {
        for (int i = 0; i < 4; ++i) {
          auto* in_block = reinterpret_cast<uint8_t*>(blk->qs) + 4 * m + i;
          uint8_t* in_group = g->qs + 64 * m + 4 * r + i;
          if (to_group) *in_group = static_cast<uint8_t>(*in_block ^ kFlip);
          if (!to_group) *in_block = static_cast<uint8_t>(*in_group ^ kFlip);
        }
      }
    }
  }
}

// Copies n_words 4-byte words between a row's field and row r's lanes of the group's field (64 bytes per
// word: tensor/quant.h), to the group or back.
void lane_words(uint8_t* row_field, uint8_t* group_field, int r, int n_words, bool to_group) {
  for (int w = 0; w < n_words; ++w) {
    uint8_t* in_row = row_field + 4 * w;
    uint8_t* in_group = group_field + 64 * w + 4 * r;
    if (to_group) std::memcpy(in_group, in_row, 4);
    if (!to_group) std::memcpy(in_row, in_group, 4);
  }
}

// Interleaves the 16 K-quant file rows at src (Block: BlockQ4_K or BlockQ6_K, cols / 256 per row) into
// one row group at dst (Group: BlockQ4_KR16 or BlockQ6_KR16), or back (to_group false). src and dst may be
// the same memory: the group goes through a copy.
template <class Block, class Group>
void interleave16_k(const void* src, void* dst, int64_t cols, bool to_group) {
  const int64_t nb = cols / kQK_K;
  const size_t bytes = static_cast<size_t>(nb) * sizeof(Group);
  std::vector<uint8_t> copy(static_cast<const uint8_t*>(src), static_cast<const uint8_t*>(src) + bytes);
  for (int64_t b = 0; b < nb; ++b) {
    auto* g = reinterpret_cast<Group*>(to_group ? static_cast<uint8_t*>(dst) : copy.data()) + b;
    for (int r = 0; r < kR16Rows; ++r) {
      auto* blk = reinterpret_cast<Block*>(to_group ? copy.data() : static_cast<uint8_t*>(dst)) + r * nb + b;
      if (to_group) g->d[r] = blk->d;
      if (!to_group) blk->d = g->d[r];
      if constexpr (std::is_same_v<Block, BlockQ4_K>) {
        if (to_group) g->dmin[r] = blk->dmin;
        if (!to_group) blk->dmin = g->dmin[r];
        lane_words(blk->scales, g->scales, r, kKScaleBytes / 4, to_group);
        lane_words(blk->qs, g->qs, r, kQK_K / 2 / 4, to_group);
      } else {
        lane_words(reinterpret_cast<uint8_t*>(blk->scales), reinterpret_cast<uint8_t*>(g->scales), r,
                   kQK_K / 16 / 4, to_group);
        lane_words(blk->ql, g->ql, r, kQK_K / 2 / 4, to_group);
        lane_words(blk->qh, g->qh, r, kQK_K / 4 / 4, to_group);
      }
    }
  }
}

}  // namespace

DType file_layout(DType t) {
  switch (t) {
    case DType::Q4_0_G8:
    case DType::Q4_0_R16:
      return DType::Q4_0;
    case DType::Q8_0_G8:
    case DType::Q8_0_R16:
      return DType::Q8_0;
    case DType::Q4_K_R16:
      return DType::Q4_K;
    case DType::Q6_K_R16:
      return DType::Q6_K;
    default:
      return t;
  }
}

int64_t row_group(DType t) {
  return t == DType::Q4_0_R16 || t == DType::Q8_0_R16 || t == DType::Q4_K_R16 || t == DType::Q6_K_R16
             ? kR16Rows
             : 1;
}

void repack(DType from, DType to, const void* src, void* dst, int64_t rows, int64_t cols) {
  const DType packed = file_layout(from) == from ? to : from;
  MX_CHECK(file_layout(packed) != packed && file_layout(packed) == (packed == from ? to : from),
           "repack: no layout change from %s to %s", std::string(dtype_name(from)).c_str(),
           std::string(dtype_name(to)).c_str());
  const bool pack = packed == to;
  if (row_group(packed) == kR16Rows) {
    MX_CHECK(rows % kR16Rows == 0 && cols % traits(packed).block_size == 0,
             "repack: %lld x %lld is not whole %s row groups", static_cast<long long>(rows),
             static_cast<long long>(cols), std::string(dtype_name(packed)).c_str());
    const size_t group_bytes = kR16Rows * row_bytes(file_layout(packed), cols);
    for (int64_t g = 0; g < rows / kR16Rows; ++g) {
      const auto* s = static_cast<const uint8_t*>(src) + static_cast<size_t>(g) * group_bytes;
      auto* d = static_cast<uint8_t*>(dst) + static_cast<size_t>(g) * group_bytes;
      if (packed == DType::Q4_0_R16) {
        interleave16<BlockQ4_0, BlockQ4_0R16, 4, 0>(s, d, cols, pack);
      } else if (packed == DType::Q4_K_R16) {
        interleave16_k<BlockQ4_K, BlockQ4_KR16>(s, d, cols, pack);
      } else if (packed == DType::Q6_K_R16) {
        interleave16_k<BlockQ6_K, BlockQ6_KR16>(s, d, cols, pack);
      } else {
        interleave16<BlockQ8_0, BlockQ8_0R16, 8, 0x80>(s, d, cols, pack);
      }
    }
    return;
  }
  const int64_t n = rows * cols;
  MX_CHECK(cols % kQKG8 == 0, "repack: rows of %lld elements are not whole groups of %d",
           static_cast<long long>(cols), kQKG8);
  const int64_t g = n / kQKG8;
  if (packed == DType::Q4_0_G8 && pack) {
    repack_q4_0_g8(static_cast<const BlockQ4_0*>(src), static_cast<BlockQ4_0G8*>(dst), g);
  } else if (packed == DType::Q4_0_G8) {
    unpack_q4_0_g8(static_cast<const BlockQ4_0G8*>(src), static_cast<BlockQ4_0*>(dst), g);
  } else if (pack) {
    repack_q8_0_g8(static_cast<const BlockQ8_0*>(src), static_cast<BlockQ8_0G8*>(dst), g);
  } else {
    unpack_q8_0_g8(static_cast<const BlockQ8_0G8*>(src), static_cast<BlockQ8_0*>(dst), g);
  }
}

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  MX_CHECK(n % traits(t).block_size == 0, "dequantize_row: %lld elements are not whole %s blocks",
           static_cast<long long>(n), std::string(dtype_name(t)).c_str());
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::F16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_f32(s[i]);
      return;
    }
    case DType::BF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::Q8_0: {
      const auto* b = static_cast<const BlockQ8_0*>(src);
      for (int64_t i = 0; i < n / kQK8_0; ++i) {
        const float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < kQK8_0; ++j) dst[i * kQK8_0 + j] = d * static_cast<float>(b[i].qs[j]);
      }
      return;
    }
    case DType::Q4_0: {
      const auto* b = static_cast<const BlockQ4_0*>(src);
      for (int64_t i = 0; i < n / kQK4_0; ++i) {
        const float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < kQK4_0 / 2; ++j) {
          dst[i * kQK4_0 + j] = d * static_cast<float>((b[i].qs[j] & 0x0f) - 8);
          dst[i * kQK4_0 + j + kQK4_0 / 2] = d * static_cast<float>((b[i].qs[j] >> 4) - 8);
        }
      }
      return;
    }
    case DType::Q4_0_G8:
    case DType::Q8_0_G8: {  // a group at a time, back to the file type
      const DType file = file_layout(t);
      const auto* g = static_cast<const uint8_t*>(src);  // [n / kQKG8, group bytes]
      const size_t group_bytes = row_bytes(t, kQKG8);
      alignas(8) uint8_t group[sizeof(BlockQ8_0G8)];  // [group bytes] (Q8_0's are the larger)
      for (int64_t i = 0; i < n / kQKG8; ++i) {
        repack(t, file, g + static_cast<size_t>(i) * group_bytes, group, 1, kQKG8);
        dequantize_row(file, group, dst + i * kQKG8, kQKG8);
      }
      return;
    }
    case DType::Q4_1:
      return detail::dequantize_q4_1(src, dst, n);
    case DType::Q5_0:
      return detail::dequantize_q5_0(src, dst, n);
    case DType::Q5_1:
      return detail::dequantize_q5_1(src, dst, n);
    case DType::Q2_K:
      return detail::dequantize_q2_k(src, dst, n);
    case DType::Q3_K:
      return detail::dequantize_q3_k(src, dst, n);
    case DType::Q4_K:
      return detail::dequantize_q4_k(src, dst, n);
    case DType::Q5_K:
      return detail::dequantize_q5_k(src, dst, n);
    case DType::Q6_K:
      return detail::dequantize_q6_k(src, dst, n);
    case DType::Q8_K:
      return detail::dequantize_q8_k(src, dst, n);
    case DType::IQ2_XXS:
      return detail::dequantize_iq2_xxs(src, dst, n);
    case DType::IQ2_XS:
      return detail::dequantize_iq2_xs(src, dst, n);
    case DType::IQ2_S:
      return detail::dequantize_iq2_s(src, dst, n);
    case DType::IQ3_XXS:
      return detail::dequantize_iq3_xxs(src, dst, n);
    case DType::IQ3_S:
      return detail::dequantize_iq3_s(src, dst, n);
    case DType::IQ1_S:
      return detail::dequantize_iq1_s(src, dst, n);
    case DType::IQ1_M:
      return detail::dequantize_iq1_m(src, dst, n);
    case DType::IQ4_NL:
      return detail::dequantize_iq4_nl(src, dst, n);
    case DType::IQ4_XS:
      return detail::dequantize_iq4_xs(src, dst, n);
    case DType::Q4_0_R16:
    case DType::Q8_0_R16:
    case DType::Q4_K_R16:
    case DType::Q6_K_R16:  // a row is spread over its group of 16: repack the tensor back to the file type
      MX_CHECK(false, "dequantize_row: %s rows are interleaved in groups of 16: repack them to %s first",
               std::string(dtype_name(t)).c_str(), std::string(dtype_name(file_layout(t))).c_str());
    default:
      MX_CHECK(false, "dequantize_row: unsupported dtype %s", std::string(dtype_name(t)).c_str());
  }
}

void quantize_row(DType t, const float* src, void* dst, int64_t n) {
  MX_CHECK(n % traits(t).block_size == 0, "quantize_row: %lld elements are not whole %s blocks",
           static_cast<long long>(n), std::string(dtype_name(t)).c_str());
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::F16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_fp16(src[i]);
      return;
    }
    case DType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::Q8_0: {
      MX_CHECK(n % kQK8_0 == 0, "q8_0 row of %lld elements", static_cast<long long>(n));
      auto* b = static_cast<BlockQ8_0*>(dst);
      for (int64_t i = 0; i < n / kQK8_0; ++i) {
        const float* x = src + i * kQK8_0;
        float amax = 0.0f;
        for (int j = 0; j < kQK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = f32_to_fp16(d);
        for (int j = 0; j < kQK8_0; ++j) b[i].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
      }
      return;
    }
    case DType::Q4_0: {
      MX_CHECK(n % kQK4_0 == 0, "q4_0 row of %lld elements", static_cast<long long>(n));
      auto* b = static_cast<BlockQ4_0*>(dst);
      for (int64_t i = 0; i < n / kQK4_0; ++i) {
        const float* x = src + i * kQK4_0;
        float amax = 0.0f, max = 0.0f;  // the value of largest magnitude, with its sign
        for (int j = 0; j < kQK4_0; ++j) {
          if (std::fabs(x[j]) > amax) {
            amax = std::fabs(x[j]);
            max = x[j];
          }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = f32_to_fp16(d);
        for (int j = 0; j < kQK4_0 / 2; ++j) {
          const int q0 = std::min(15, static_cast<int>(x[j] * id + 8.5f));
          const int q1 = std::min(15, static_cast<int>(x[j + kQK4_0 / 2] * id + 8.5f));
          b[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
        }
      }
      return;
    }
    case DType::Q4_0_G8:
    case DType::Q8_0_G8:  // the file type's encoding, then repacked in place
      quantize_row(file_layout(t), src, dst, n);
      return repack(file_layout(t), t, dst, dst, 1, n);
    case DType::Q4_1:
      return detail::quantize_q4_1(src, dst, n);
    case DType::Q5_0:
      return detail::quantize_q5_0(src, dst, n);
    case DType::Q5_1:
      return detail::quantize_q5_1(src, dst, n);
    case DType::Q2_K:
      return detail::quantize_q2_k(src, dst, n);
    case DType::Q3_K:
      return detail::quantize_q3_k(src, dst, n);
    case DType::Q4_K:
      return detail::quantize_q4_k(src, dst, n);
    case DType::Q5_K:
      return detail::quantize_q5_k(src, dst, n);
    case DType::Q6_K:
      return detail::quantize_q6_k(src, dst, n);
    case DType::Q8_K:
      return detail::quantize_q8_k(src, dst, n);
    case DType::IQ4_NL:
      return detail::quantize_iq4_nl(src, dst, n);
    case DType::IQ4_XS:
      return detail::quantize_iq4_xs(src, dst, n);
    case DType::IQ2_XXS:
      return detail::quantize_iq2_xxs(src, dst, n);
    case DType::IQ2_XS:
      return detail::quantize_iq2_xs(src, dst, n);
    case DType::IQ2_S:
      return detail::quantize_iq2_s(src, dst, n);
    case DType::IQ3_XXS:
      return detail::quantize_iq3_xxs(src, dst, n);
    case DType::IQ3_S:
      return detail::quantize_iq3_s(src, dst, n);
    case DType::IQ1_S:
      return detail::quantize_iq1_s(src, dst, n);
    case DType::IQ1_M:
      return detail::quantize_iq1_m(src, dst, n);
    case DType::Q4_0_R16:
    case DType::Q8_0_R16:
    case DType::Q4_K_R16:
    case DType::Q6_K_R16:
      MX_CHECK(false, "quantize_row: %s interleaves 16 rows: quantize to %s, then repack the tensor",
               std::string(dtype_name(t)).c_str(), std::string(dtype_name(file_layout(t))).c_str());
    default:
      MX_CHECK(false, "quantize_row: unsupported dtype %s", std::string(dtype_name(t)).c_str());
  }
}

bool uses_importance(DType t) {
  switch (t) {
    case DType::Q2_K:
    case DType::Q3_K:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K:
    case DType::IQ4_NL:
    case DType::IQ4_XS:
    case DType::IQ2_XXS:
    case DType::IQ2_XS:
    case DType::IQ2_S:
    case DType::IQ3_XXS:
    case DType::IQ3_S:
    case DType::IQ1_S:
    case DType::IQ1_M:
      return true;
    default:
      return false;
  }
}

bool needs_importance(DType t) {
  switch (t) {
    case DType::IQ1_S:
    case DType::IQ1_M:
    case DType::IQ2_XXS:
    case DType::IQ2_XS:
    case DType::IQ2_S:
    case DType::IQ3_XXS:
      return true;
    default:
      return false;
  }
}

void quantize_row_weighted(DType t, const float* src, void* dst, int64_t n, const float* qw) {
  if (!qw || !uses_importance(t)) return quantize_row(t, src, dst, n);
  MX_CHECK(n % traits(t).block_size == 0, "quantize_row_weighted: %lld elements are not whole %s blocks",
           static_cast<long long>(n), std::string(dtype_name(t)).c_str());
  switch (t) {
    case DType::IQ4_NL:
      return detail::quantize_iq4_nl(src, dst, n, qw);
    case DType::IQ4_XS:
      return detail::quantize_iq4_xs(src, dst, n, qw);
    case DType::IQ2_XXS:
      return detail::quantize_iq2_xxs(src, dst, n, qw);
    case DType::IQ2_XS:
      return detail::quantize_iq2_xs(src, dst, n, qw);
    case DType::IQ2_S:
      return detail::quantize_iq2_s(src, dst, n, qw);
    case DType::IQ3_XXS:
      return detail::quantize_iq3_xxs(src, dst, n, qw);
    case DType::IQ3_S:
      return detail::quantize_iq3_s(src, dst, n, qw);
    case DType::IQ1_S:
      return detail::quantize_iq1_s(src, dst, n, qw);
    case DType::IQ1_M:
      return detail::quantize_iq1_m(src, dst, n, qw);
    case DType::Q2_K:
      return detail::quantize_q2_k(src, dst, n, qw);
    case DType::Q3_K:
      return detail::quantize_q3_k(src, dst, n, qw);
    case DType::Q4_K:
      return detail::quantize_q4_k(src, dst, n, qw);
    case DType::Q5_K:
      return detail::quantize_q5_k(src, dst, n, qw);
    default:
      return detail::quantize_q6_k(src, dst, n, qw);
  }
}

}  // namespace mixtral
