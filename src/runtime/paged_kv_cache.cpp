#include "runtime/paged_kv_cache.h"

#include <algorithm>
#include <atomic>
#include <new>
#include <string>

#include "core/check.h"
#include "runtime/follow.h"

namespace mixtral {

namespace {
constexpr std::align_val_t kAlign{64};  // cache lines, and every vector width the kernels load

int32_t next_id() {
  static std::atomic<int32_t> next{0};
  return next++;
}

uint8_t* alloc_bytes(size_t n) {
  return static_cast<uint8_t*>(::operator new[](n, kAlign));
}
}  // namespace

void PagedKvCache::FreeBytes::operator()(uint8_t* p) const {
  ::operator delete[](p, kAlign);
}

PagedKvCache::PagedKvCache(const ModelConfig& c, DType type, int64_t n_blocks, int64_t block_size)
    : type_(type),
      n_blocks_(n_blocks),
      block_size_(block_size),
      n_layers_(c.n_layers),
      n_kv_heads_(c.n_kv_heads),
      head_dim_(c.head_dim),
      row_bytes_(kernels::kv_row_bytes(type, c.n_kv_heads, c.head_dim)),
      layer_bytes_(static_cast<size_t>(n_blocks * block_size) * row_bytes_),
      meta_(static_cast<size_t>(n_blocks)),
      id_(next_id()) {
  MX_CHECK(kernels::is_kv_type(type), "paged KV cache: %s is not a cache type",
           std::string(dtype_name(type)).c_str());
  MX_CHECK(n_blocks > 0 && n_blocks < (int64_t{1} << 31) && block_size > 0, "bad paged KV cache size");
  k_.reset(alloc_bytes(layer_bytes_ * static_cast<size_t>(n_layers_)));
  v_.reset(alloc_bytes(layer_bytes_ * static_cast<size_t>(n_layers_)));
  free_.reserve(static_cast<size_t>(n_blocks));
  for (int64_t b = n_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

PagedKvCache::~PagedKvCache() {
  if (mirrored_) follow::send(follow::Kind::kDrop, {id_});
}

int32_t PagedKvCache::allocate() {
  int32_t b = -1;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    b = lru_.front();
    lru_.pop_front();
    meta_[static_cast<size_t>(b)].in_lru = false;
    unpublish(b);
  } else {
    return -1;
  }
  meta_[static_cast<size_t>(b)].ref = 1;
  ++n_in_use_;
  return b;
}

void PagedKvCache::retain(int32_t b) {
  Meta& m = meta_[static_cast<size_t>(b)];
  if (m.ref == 0) {
    MX_CHECK(m.in_lru, "retaining block %d that is neither used nor cached", b);
    lru_.erase(m.lru_it);
    m.in_lru = false;
    ++n_in_use_;
  }
  ++m.ref;
}

void PagedKvCache::release(int32_t b) {
  Meta& m = meta_[static_cast<size_t>(b)];
  MX_CHECK(m.ref > 0, "releasing free block %d", b);
  if (--m.ref > 0) return;
  --n_in_use_;
  if (m.published) {
    m.lru_it = lru_.insert(lru_.end(), b);
    m.in_lru = true;
  } else {
    free_.push_back(b);
  }
}

uint64_t PagedKvCache::block_hash(uint64_t parent, const int32_t* tokens, int64_t n) {
  uint64_t h = parent ^ 0xcbf29ce484222325ull;  // FNV-1a over the parent hash and the token ids
  for (int64_t i = 0; i < n; ++i) {
    auto u = static_cast<uint32_t>(tokens[i]);
    for (int byte = 0; byte < 4; ++byte) {
      h ^= (u >> (8 * byte)) & 0xff;
      h *= 0x100000001b3ull;
    }
  }
  return h == 0 ? 1 : h;  // 0 means "no parent"
}

int32_t PagedKvCache::lookup(uint64_t hash, uint64_t parent, const int32_t* tokens) {
  auto [lo, hi] = index_.equal_range(hash);
  for (auto it = lo; it != hi; ++it) {
    const Meta& m = meta_[static_cast<size_t>(it->second)];
    if (m.parent == parent && std::equal(m.tokens.begin(), m.tokens.end(), tokens)) {
      retain(it->second);
      return it->second;
    }
  }
  return -1;
}

void PagedKvCache::publish(int32_t b, uint64_t hash, uint64_t parent, const int32_t* tokens) {
  Meta& m = meta_[static_cast<size_t>(b)];
  if (m.published) return;
  // An identical block already findable (two sequences computed the same prefix at once): keep one.
  auto [lo, hi] = index_.equal_range(hash);
  for (auto it = lo; it != hi; ++it) {
    const Meta& o = meta_[static_cast<size_t>(it->second)];
    if (o.parent == parent && std::equal(o.tokens.begin(), o.tokens.end(), tokens)) return;
  }
  m.published = true;
  m.hash = hash;
  m.parent = parent;
  m.tokens.assign(tokens, tokens + block_size_);
  index_.emplace(hash, b);
}

void PagedKvCache::unpublish(int32_t b) {
  Meta& m = meta_[static_cast<size_t>(b)];
  if (!m.published) return;
  auto [lo, hi] = index_.equal_range(m.hash);
  for (auto it = lo; it != hi; ++it)
    if (it->second == b) {
      index_.erase(it);
      break;
    }
  m.published = false;
  m.tokens.clear();
}

}  // namespace mixtral
