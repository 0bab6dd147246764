#include "runtime/follow.h"

#include <algorithm>
#include <map>
#include <memory>

#include "core/check.h"
#include "core/dist.h"
#include "runtime/paged_kv_cache.h"
#include "runtime/runtime.h"

namespace mixtral::follow {

void send(Kind kind, const Words& body) {
  if (!dist::active()) return;
  MX_CHECK(dist::rank() == 0, "follow::send from rank %d", dist::rank());
  int64_t head[2] = {static_cast<int64_t>(kind), static_cast<int64_t>(body.size())};
  dist::broadcast(head, sizeof(head));
  // The root's buffer is only read.
  dist::broadcast(const_cast<int32_t*>(body.data()), sizeof(int32_t) * body.size());
}

Kind receive(Words& body) {
  int64_t head[2] = {0, 0};
  dist::broadcast(head, sizeof(head));
  MX_CHECK(head[0] >= 1 && head[0] <= 4 && head[1] >= 0, "follow: bad message (%lld, %lld) from rank 0",
           static_cast<long long>(head[0]), static_cast<long long>(head[1]));
  body.resize(static_cast<size_t>(head[1]));
  dist::broadcast(body.data(), sizeof(int32_t) * body.size());
  return static_cast<Kind>(head[0]);
}

void put_string(Words& body, const std::string& s) {
  body.push_back(static_cast<int32_t>(s.size()));
  const size_t at = body.size();
  body.resize(at + (s.size() + 3) / 4, 0);
  std::copy(s.begin(), s.end(), reinterpret_cast<char*>(body.data() + at));
}

std::string get_string(const Words& body, size_t& at) {
  MX_CHECK(at < body.size(), "follow: truncated message");
  const auto n = static_cast<size_t>(body[at++]);
  MX_CHECK(at + (n + 3) / 4 <= body.size(), "follow: truncated message");
  std::string s(reinterpret_cast<const char*>(body.data() + at), n);
  at += (n + 3) / 4;
  return s;
}

Kind follow_steps(const Model& m, ThreadPool& pool, Words& body) {
  std::map<int32_t, std::unique_ptr<PagedKvCache>> caches;  // rank 0's live caches, by id
  std::unique_ptr<Runtime> rt;
  std::vector<std::vector<int32_t>> tables;
  std::vector<BatchToken> entries;
  for (;;) {
    const Kind kind = receive(body);
    if (kind == Kind::kDrop) {
      MX_CHECK(body.size() == 1, "follow: bad drop message");
      caches.erase(body[0]);
      continue;
    }
    if (kind != Kind::kStep) return kind;
    // [id, dtype, n_blocks, block_size, n, n x (token, pos, table), n_tables, n_tables x (len, ids...)]
    MX_CHECK(body.size() >= 6, "follow: bad step message");
    size_t at = 0;
    const int32_t id = body[at++];
    const auto type = static_cast<DType>(body[at++]);
    const int64_t n_blocks = body[at++], block_size = body[at++], n = body[at++];
    MX_CHECK(n > 0 && body.size() >= at + 3 * static_cast<size_t>(n) + 1, "follow: bad step message");
    std::unique_ptr<PagedKvCache>& kv = caches[id];
    if (!kv) kv = std::make_unique<PagedKvCache>(m.config, type, n_blocks, block_size);
    MX_CHECK(kv->type() == type && kv->n_blocks() == n_blocks && kv->block_size() == block_size,
             "follow: cache %d changed its size", id);
    const size_t entries_at = at;
    at += 3 * static_cast<size_t>(n);
    const auto n_tables = static_cast<size_t>(body[at++]);
    tables.resize(n_tables);
    for (auto& t : tables) {
      MX_CHECK(at < body.size() && at + static_cast<size_t>(body[at]) < body.size() + 1, "follow: bad table");
      const auto len = static_cast<size_t>(body[at++]);
      t.assign(body.begin() + static_cast<ptrdiff_t>(at), body.begin() + static_cast<ptrdiff_t>(at + len));
      at += len;
    }
    entries.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const int32_t* w = body.data() + entries_at + 3 * static_cast<size_t>(i);
      MX_CHECK(w[2] >= 0 && static_cast<size_t>(w[2]) < n_tables &&
                   w[1] / block_size < static_cast<int64_t>(tables[static_cast<size_t>(w[2])].size()),
               "follow: bad step entry");
      entries[static_cast<size_t>(i)] = {w[0], w[1], tables[static_cast<size_t>(w[2])].data(), false};
    }
    if (!rt || rt->max_batch() < n)
      rt = std::make_unique<Runtime>(m, RuntimeOptions{std::max<int64_t>(n, 256)}, pool);
    rt->step(entries.data(), n, *kv, nullptr);
  }
}

}  // namespace mixtral::follow
