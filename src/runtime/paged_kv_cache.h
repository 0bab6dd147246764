// Paged KV cache: a pool of fixed-size blocks (block_size positions x every layer) of one element type
// (F32, F16 or Q8_0, K and V alike), handed to sequences on demand through per-sequence block tables, with
// refcounts and a prefix cache keyed by a chained hash of each full block's tokens. A full block is
// immutable, so sequences that share a prompt prefix share its blocks; a released block stays cached (LRU)
// until its memory is needed. Not thread-safe: one scheduler thread owns it.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <unordered_map>
#include <vector>

#include "kernels/paged_attention.h"
#include "model/config.h"
#include "tensor/dtype.h"

namespace mixtral {

class PagedKvCache {
 public:
  // type: F32, F16 or Q8_0 (Q8_0 needs head_dim % 32 == 0: the engines refuse it first).
  PagedKvCache(const ModelConfig& c, DType type, int64_t n_blocks, int64_t block_size);
  ~PagedKvCache();  // under mpirun, tells the followers to drop their copy (follow.h)
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;

  // Unique in this process: how rank 0 names the cache to the ranks that follow its steps.
  int32_t id() const { return id_; }
  // Runtime::step, on rank 0 under mpirun: the followers hold a copy of this cache from now on.
  void set_mirrored() { mirrored_ = true; }

  DType type() const { return type_; }
  int64_t block_size() const { return block_size_; }
  int64_t n_blocks() const { return n_blocks_; }
  // One layer's blocks for the kernels (paged_kv_store, paged_attention).
  //   k, v: [n_blocks, block_size * kv_row_bytes(type, n_kv_heads, head_dim)] bytes
  kernels::PagedKv layer(int64_t l) const {
    return {
        k_.get() + l * layer_bytes_, v_.get() + l * layer_bytes_, type_, block_size_, n_kv_heads_, head_dim_};
  }
  size_t bytes() const { return 2 * layer_bytes_ * static_cast<size_t>(n_layers_); }  // the whole pool
  size_t bytes_per_token() const {
    return 2 * row_bytes_ * static_cast<size_t>(n_layers_);
  }  // K and V, all layers

  // A block for one sequence (refcount 1): a free one, else the least recently used cached one
  // (dropped from the prefix cache). -1 when every block is referenced.
  int32_t allocate();
  void retain(int32_t b);
  void release(int32_t b);  // refcount - 1; at 0 a published block stays cached, else it is freed

  // Chained hash of a full block: parent (0 for the first block) and its block_size tokens.
  static uint64_t block_hash(uint64_t parent, const int32_t* tokens, int64_t n);
  // The cached block holding these tokens after this parent, retained (refcount + 1); -1 if none.
  int32_t lookup(uint64_t hash, uint64_t parent, const int32_t* tokens);
  // Makes a full, computed block findable by lookup.
  void publish(int32_t b, uint64_t hash, uint64_t parent, const int32_t* tokens);

  int64_t n_in_use() const { return n_in_use_; }                               // refcount > 0
  int64_t n_cached_idle() const { return static_cast<int64_t>(lru_.size()); }  // cached, refcount 0
  int64_t n_available() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  int32_t refcount(int32_t b) const { return meta_[static_cast<size_t>(b)].ref; }

 private:
  struct Meta {
    int32_t ref = 0;
    bool published = false;
    uint64_t hash = 0, parent = 0;
    std::vector<int32_t> tokens;  // [block_size] when published
    std::list<int32_t>::iterator lru_it;
    bool in_lru = false;
  };
  void unpublish(int32_t b);

  struct FreeBytes {
    void operator()(uint8_t* p) const;
  };
  DType type_;
  int64_t n_blocks_, block_size_, n_layers_, n_kv_heads_, head_dim_;
  size_t row_bytes_, layer_bytes_;               // one position's K (or V) in one layer; one layer's blocks
  std::unique_ptr<uint8_t[], FreeBytes> k_, v_;  // [n_layers, layer_bytes_] uninitialised: pages are
                                                 // touched as blocks fill
  std::vector<Meta> meta_;                       // [n_blocks]
  std::vector<int32_t> free_;                    // never-published free blocks (a stack)
  std::list<int32_t> lru_;                       // published, refcount 0, least recently used first
  std::unordered_multimap<uint64_t, int32_t> index_;  // hash -> published block
  int64_t n_in_use_ = 0;
  int32_t id_;
  bool mirrored_ = false;
};

}  // namespace mixtral
