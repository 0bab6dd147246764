#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>

#include "kernels/kernels.h"
#include "kernels/paged_attention.h"
#include "runtime/follow.h"
#include "runtime/runtime.h"
#include "tensor/quant.h"

namespace mixtral {

Runtime::Runtime(const Model& m, const RuntimeOptions& opts, ThreadPool& pool)
    : m_(m), c_(m.config), opts_(opts), pool_(pool), moe_(m.config, m.rank, m.n_ranks) {
  MX_CHECK(opts_.max_batch > 0, "bad runtime options");
  const auto B = static_cast<size_t>(opts_.max_batch);
  const auto dim = static_cast<size_t>(c_.dim), qd = static_cast<size_t>(c_.n_heads * c_.head_dim);
  const auto kvd = static_cast<size_t>(c_.n_kv_heads * c_.head_dim);
  x_.resize(B * dim);
  xn_.resize(B * dim);
  q_.resize(B * qd);
  att_.resize(B * qd);
  o_.resize(B * dim);
  kn_.resize(B * kvd);
  vn_.resize(B * kvd);
  pos_.resize(B);
  slots_.resize(B);
  tables_.resize(B);
}

// Rank 0 under mpirun: the step for the other ranks (follow.h's step message). Entries of one sequence share
// its block table: each table goes once, as far as its entries' positions reach.
void Runtime::announce(const BatchToken* e, int64_t n, PagedKvCache& kv) {
  const int64_t bs = kv.block_size();
  follow::Words& w = announce_;
  w.assign({kv.id(), static_cast<int32_t>(kv.type()), static_cast<int32_t>(kv.n_blocks()),
            static_cast<int32_t>(bs), static_cast<int32_t>(n)});
  std::vector<const int32_t*> tables;
  std::vector<int32_t> reach;  // [tables] blocks each table needs
  for (int64_t t = 0; t < n; ++t) {
    const auto it = std::find(tables.begin(), tables.end(), e[t].block_table);
    const auto i = static_cast<size_t>(it - tables.begin());
    if (it == tables.end()) {
      tables.push_back(e[t].block_table);
      reach.push_back(0);
    }
    reach[i] = std::max(reach[i], e[t].pos / static_cast<int32_t>(bs) + 1);
    w.insert(w.end(), {e[t].token, e[t].pos, static_cast<int32_t>(i)});
  }
  w.push_back(static_cast<int32_t>(tables.size()));
  for (size_t i = 0; i < tables.size(); ++i) {
    w.push_back(reach[i]);
    w.insert(w.end(), tables[i], tables[i] + reach[i]);
  }
  follow::send(follow::Kind::kStep, w);
  kv.set_mirrored();
}

void Runtime::step(const BatchToken* e, int64_t n, PagedKvCache& kv, float* logits) {
  MX_CHECK(n > 0 && n <= opts_.max_batch, "step: %lld entries for a batch of %lld", static_cast<long long>(n),
           static_cast<long long>(opts_.max_batch));
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
             "step: bad entry %lld", static_cast<long long>(t));
    const auto i = static_cast<size_t>(t);
    pos_[i] = e[t].pos;
    tables_[i] = e[t].block_table;
    slots_[i] = static_cast<int64_t>(e[t].block_table[e[t].pos / bs]) * bs + e[t].pos % bs;
    dequantize_row(m_.tok_embd.dtype, m_.tok_embd.row(e[t].token), x + t * dim, dim);
  }
  if (m_.n_ranks > 1 && m_.rank == 0) announce(e, n, kv);
  const kernels::RopeParams rope_q{c_.n_heads, hd, c_.rope_theta, c_.rope_layout};
  const kernels::RopeParams rope_k{c_.n_kv_heads, hd, c_.rope_theta, c_.rope_layout};
  const kernels::AttentionParams ap{c_.n_heads, c_.n_kv_heads, hd, c_.sliding_window,
                                    1.0f / std::sqrt(static_cast<float>(hd))};
  for (int64_t l = 0; l < c_.n_layers; ++l) {
    const LayerWeights& w = m_.layers[static_cast<size_t>(l)];
    const kernels::PagedKv cache = kv.layer(l);
    // Attention: the new K/V rows go into their slots before any entry attends.
    kernels::rmsnorm(x, w.attn_norm.data(), n, dim, c_.norm_eps, xn);
    xn_in_.reset(xn, n, dim);  // one quantization of xn for Wq, Wk and Wv
    kernels::matmul(w.wq, xn_in_, q, qd, pool_);
    kernels::matmul(w.wk, xn_in_, kn, kvd, pool_);
    kernels::matmul(w.wv, xn_in_, vn, kvd, pool_);
    if (observer_)
      for (MatmulWeight mw : {MatmulWeight::kWq, MatmulWeight::kWk, MatmulWeight::kWv})
        observer_->observe(l, mw, -1, xn, nullptr, n, dim);
    kernels::rope(q, pos_.data(), n, rope_q);
    kernels::rope(kn, pos_.data(), n, rope_k);
    kernels::paged_kv_store(cache, kn, vn, slots_.data(), n);
    kernels::paged_attention(q, cache, tables_.data(), pos_.data(), n, ap, att, pool_);
    att_in_.reset(att, n, qd);
    kernels::matmul(w.wo, att_in_, o, dim, pool_);
    if (observer_) observer_->observe(l, MatmulWeight::kWo, -1, att, nullptr, n, qd);
    for (int64_t i = 0; i < n * dim; ++i) x[i] += o[i];
    // Mixture of experts.
    kernels::rmsnorm(x, w.ffn_norm.data(), n, dim, c_.norm_eps, xn);
    moe_.forward(w, xn, n, o, pool_);
    if (observer_) moe_.observe_inputs(xn, l, *observer_);
    if (routing_sink_) routing_sink_(l, pos_.data(), n, moe_.routing());
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

SoloSequence::SoloSequence(Runtime& rt, PagedKvCache& kv, int64_t n_ctx)
    : rt_(rt),
      kv_(kv),
      n_ctx_(n_ctx),
      table_(static_cast<size_t>(kv.n_blocks())),
      batch_(static_cast<size_t>(rt.max_batch())) {
  MX_CHECK(n_ctx > 0 && n_ctx <= kv.n_blocks() * kv.block_size(),
           "SoloSequence: the cache holds %lld positions",
           static_cast<long long>(kv.n_blocks() * kv.block_size()));
  std::iota(table_.begin(), table_.end(), 0);
}

Status SoloSequence::eval(const int32_t* tokens, int64_t n, int64_t n_past, float* logits, bool all_logits) {
  const int64_t V = rt_.config().vocab_size;
  if (n <= 0) return Error::usage("empty prompt: nothing to evaluate");
  if (n_past < 0 || n_past + n > n_ctx())
    return Error::usage("prompt of " + std::to_string(n_past + n) + " tokens exceeds the context of " +
                        std::to_string(n_ctx()) + " tokens (--ctx-size)");
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= V)
      return Error::usage("token id " + std::to_string(tokens[i]) + " at position " +
                          std::to_string(n_past + i) + " is out of range [0, " + std::to_string(V) + ")");
  for (int64_t b = 0; b < n; b += rt_.max_batch()) {
    const int64_t nb = std::min(rt_.max_batch(), n - b);
    const bool last = b + nb == n;
    for (int64_t i = 0; i < nb; ++i)
      batch_[static_cast<size_t>(i)] = {tokens[b + i], static_cast<int32_t>(n_past + b + i), table_.data(),
                                        logits && (all_logits || (last && i == nb - 1))};
    float* out = !logits ? nullptr : all_logits ? logits + b * V : logits;
    rt_.step(batch_.data(), nb, kv_, out);
  }
  return {};
}

}  // namespace mixtral
