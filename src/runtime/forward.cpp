#include <cmath>
#include <cstring>

#include "kernels/kernels.h"
#include "kernels/paged_attention.h"
#include "runtime/runtime.h"
#include "tensor/quant.h"

namespace mixtral {

KvCache::KvCache(const ModelConfig& c, int64_t n_ctx)
    : n_ctx_(n_ctx),
      n_layers_(c.n_layers),
      layer_stride_(n_ctx * c.n_kv_heads * c.head_dim),
      k_(new float[static_cast<size_t>(layer_stride_ * c.n_layers)]),
      v_(new float[static_cast<size_t>(layer_stride_ * c.n_layers)]) {}

Runtime::Runtime(const Model& m, const RuntimeOptions& opts, ThreadPool& pool)
    : m_(m), c_(m.config), opts_(opts), pool_(pool), kv_(m.config, opts.n_ctx), moe_(m.config) {
  MX_CHECK(opts_.max_batch > 0 && opts_.n_ctx > 0, "bad runtime options");
  const auto B = static_cast<size_t>(opts_.max_batch);
  const auto dim = static_cast<size_t>(c_.dim), qd = static_cast<size_t>(c_.n_heads * c_.head_dim);
  x_.resize(B * dim);
  xn_.resize(B * dim);
  q_.resize(B * qd);
  att_.resize(B * qd);
  o_.resize(B * dim);
  pos_.resize(B);
  kn_.resize(B * static_cast<size_t>(c_.n_kv_heads * c_.head_dim));
  vn_.resize(B * static_cast<size_t>(c_.n_kv_heads * c_.head_dim));
  tables_.resize(B);
}

Status Runtime::forward(const int32_t* tokens, int64_t n, int64_t n_past, float* logits, bool all_logits) {
  if (n <= 0) return Error::usage("empty prompt: nothing to evaluate");
  if (n_past < 0 || n_past + n > kv_.n_ctx())
    return Error::usage("prompt of " + std::to_string(n_past + n) + " tokens exceeds the context of " +
                        std::to_string(kv_.n_ctx()) + " tokens (--ctx-size)");
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= c_.vocab_size)
      return Error::usage("token id " + std::to_string(tokens[i]) + " at position " +
                          std::to_string(n_past + i) + " is out of range [0, " +
                          std::to_string(c_.vocab_size) + ")");
  for (int64_t b = 0; b < n; b += opts_.max_batch) {
    const int64_t nb = std::min(opts_.max_batch, n - b);
    const bool last = b + nb == n;
    float* out = all_logits ? logits + b * c_.vocab_size : (last ? logits : nullptr);
    forward_batch(tokens + b, nb, n_past + b, out, all_logits);
  }
  return {};
}

void Runtime::forward_batch(const int32_t* tokens, int64_t n, int64_t n_past, float* logits,
                            bool all_logits) {
  const int64_t dim = c_.dim, hd = c_.head_dim;
  const int64_t qd = c_.n_heads * hd, kvd = c_.n_kv_heads * hd;
  float* x = x_.data();      // [n, dim]
  float* xn = xn_.data();    // [n, dim]
  float* q = q_.data();      // [n, n_heads * hd]
  float* att = att_.data();  // [n, n_heads * hd]
  float* o = o_.data();      // [n, dim]
  for (int64_t t = 0; t < n; ++t) {
    pos_[static_cast<size_t>(t)] = static_cast<int32_t>(n_past + t);
    dequantize_row(m_.tok_embd.dtype, m_.tok_embd.row(tokens[t]), x + t * dim, dim);
  }
  const kernels::RopeParams rope_q{c_.n_heads, hd, c_.rope_theta, c_.rope_layout};
  const kernels::RopeParams rope_k{c_.n_kv_heads, hd, c_.rope_theta, c_.rope_layout};
  const kernels::AttentionParams ap{c_.n_heads, c_.n_kv_heads, hd, c_.sliding_window,
                                    1.0f / std::sqrt(static_cast<float>(hd))};

  for (int64_t l = 0; l < c_.n_layers; ++l) {
    const LayerWeights& w = m_.layers[static_cast<size_t>(l)];
    // Attention: new K/V rows go straight into the cache at their positions.
    float* kc = kv_.k(l);  // [n_ctx, kvd]
    float* vc = kv_.v(l);  // [n_ctx, kvd]
    kernels::rmsnorm(x, w.attn_norm.data(), n, dim, c_.norm_eps, xn);
    xn_in_.reset(xn, n, dim);  // one quantization of xn for Wq, Wk and Wv
    kernels::matmul(w.wq, xn_in_, q, qd, pool_);
    kernels::matmul(w.wk, xn_in_, kc + n_past * kvd, kvd, pool_);
    kernels::matmul(w.wv, xn_in_, vc + n_past * kvd, kvd, pool_);
    kernels::rope(q, pos_.data(), n, rope_q);
    kernels::rope(kc + n_past * kvd, pos_.data(), n, rope_k);
    kernels::attention(q, kc, vc, pos_.data(), n, n_past + n, ap, att, pool_);
    att_in_.reset(att, n, qd);
    kernels::matmul(w.wo, att_in_, o, dim, pool_);
    for (int64_t i = 0; i < n * dim; ++i) x[i] += o[i];
    // Mixture of experts.
    kernels::rmsnorm(x, w.ffn_norm.data(), n, dim, c_.norm_eps, xn);
    moe_.forward(w, xn, n, o, pool_);
    if (routing_sink_) routing_sink_(l, n_past, moe_.routing());
    for (int64_t i = 0; i < n * dim; ++i) x[i] += o[i];
  }
  if (!logits) return;
  const int64_t first = all_logits ? 0 : n - 1, rows = n - first;
  kernels::rmsnorm(x + first * dim, m_.out_norm.data(), rows, dim, c_.norm_eps, xn);
  kernels::matmul(m_.output, xn, rows, logits, c_.vocab_size, pool_);
}

void Runtime::forward_paged(const BatchToken* e, int64_t n, PagedKvCache& kv, float* logits) {
  MX_CHECK(n > 0 && n <= opts_.max_batch, "forward_paged: %lld tokens for a batch of %lld",
           static_cast<long long>(n), static_cast<long long>(opts_.max_batch));
  const int64_t dim = c_.dim, hd = c_.head_dim, bs = kv.block_size();
  const int64_t qd = c_.n_heads * hd, kvd = c_.n_kv_heads * hd;
  float* x = x_.data();      // [n, dim]
  float* xn = xn_.data();    // [n, dim]
  float* q = q_.data();      // [n, n_heads * hd]
  float* att = att_.data();  // [n, n_heads * hd]
  float* o = o_.data();      // [n, dim]
  float* kn = kn_.data();    // [n, kvd]
  float* vn = vn_.data();    // [n, kvd]
  for (int64_t t = 0; t < n; ++t) {
    MX_CHECK(e[t].token >= 0 && e[t].token < c_.vocab_size && e[t].pos >= 0 && e[t].block_table,
             "forward_paged: bad entry %lld", static_cast<long long>(t));
    pos_[static_cast<size_t>(t)] = e[t].pos;
    tables_[static_cast<size_t>(t)] = e[t].block_table;
    dequantize_row(m_.tok_embd.dtype, m_.tok_embd.row(e[t].token), x + t * dim, dim);
  }
  const kernels::RopeParams rope_q{c_.n_heads, hd, c_.rope_theta, c_.rope_layout};
  const kernels::RopeParams rope_k{c_.n_kv_heads, hd, c_.rope_theta, c_.rope_layout};
  const kernels::AttentionParams ap{c_.n_heads, c_.n_kv_heads, hd, c_.sliding_window,
                                    1.0f / std::sqrt(static_cast<float>(hd))};
  for (int64_t l = 0; l < c_.n_layers; ++l) {
    const LayerWeights& w = m_.layers[static_cast<size_t>(l)];
    float* kc = kv.k(l);  // [n_blocks, bs, kvd]
    float* vc = kv.v(l);  // [n_blocks, bs, kvd]
    kernels::rmsnorm(x, w.attn_norm.data(), n, dim, c_.norm_eps, xn);
    xn_in_.reset(xn, n, dim);  // one quantization of xn for Wq, Wk and Wv
    kernels::matmul(w.wq, xn_in_, q, qd, pool_);
    kernels::matmul(w.wk, xn_in_, kn, kvd, pool_);
    kernels::matmul(w.wv, xn_in_, vn, kvd, pool_);
    kernels::rope(q, pos_.data(), n, rope_q);
    kernels::rope(kn, pos_.data(), n, rope_k);
    for (int64_t t = 0; t < n; ++t) {  // new rows into their blocks, before any token attends
      const int64_t p = e[t].pos, row = static_cast<int64_t>(e[t].block_table[p / bs]) * bs + p % bs;
      std::memcpy(kc + row * kvd, kn + t * kvd, sizeof(float) * static_cast<size_t>(kvd));
      std::memcpy(vc + row * kvd, vn + t * kvd, sizeof(float) * static_cast<size_t>(kvd));
    }
    kernels::paged_attention(q, kernels::PagedKv{kc, vc, DType::F32, bs, c_.n_kv_heads, hd}, tables_.data(), pos_.data(), n, ap, att, pool_);
    att_in_.reset(att, n, qd);
    kernels::matmul(w.wo, att_in_, o, dim, pool_);
    for (int64_t i = 0; i < n * dim; ++i) x[i] += o[i];
    kernels::rmsnorm(x, w.ffn_norm.data(), n, dim, c_.norm_eps, xn);
    moe_.forward(w, xn, n, o, pool_);
    if (expert_counts_)
      for (int32_t ex : moe_.routing().experts)
        ++(*expert_counts_)[static_cast<size_t>(l * c_.n_experts + ex)];
    for (int64_t i = 0; i < n * dim; ++i) x[i] += o[i];
  }
  if (!logits) return;
  int64_t rows = 0;  // gather the rows that want logits: [rows, dim]
  for (int64_t t = 0; t < n; ++t)
    if (e[t].want_logits) {
      if (rows != t) std::memcpy(x + rows * dim, x + t * dim, sizeof(float) * static_cast<size_t>(dim));
      ++rows;
    }
  if (rows == 0) return;
  kernels::rmsnorm(x, m_.out_norm.data(), rows, dim, c_.norm_eps, xn);
  kernels::matmul(m_.output, xn, rows, logits, c_.vocab_size, pool_);
}

}  // namespace mixtral
