// `mixtral serve`: an OpenAI-compatible HTTP server (cpp-httplib, nlohmann-json) over the
// continuous-batching engine (include/mixtral/server_engine.h).
#pragma once

#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace mixtral::server {

struct ServerOptions {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (printed)
  int parallel = 4;
  int64_t ctx_size = 0;
  std::string api_key;  // empty: no authentication
  int threads = 0;
  int64_t max_queue = 256;           // waiting requests before 429
  size_t max_body_bytes = 4u << 20;  // larger bodies get 413
  int idle_timeout_s = 30;           // socket read/write timeout
  int request_timeout_s = 600;       // whole request (queue + generation)
  double shutdown_grace_s = 10;      // in-flight requests may finish for this long on SIGINT/SIGTERM
  bool no_repack = false;            // keep weights in the file's layout (BatchEngineOptions::repack)
  std::string cache_type = "f16";    // KV cache type (parse_kv_cache_type)
  int64_t kv_memory = 0;             // bytes of the KV block pool; 0: parallel full contexts
  int64_t step_tokens = 64;          // tokens per forward step (BatchEngineOptions::max_batch)
};

// Registers the `serve` flags on app, writing into o.
void add_serve_options(CLI::App* app, ServerOptions& o);

// Serves until SIGINT/SIGTERM; returns the exit status (0 after a graceful shutdown).
int serve(const ServerOptions& opts);

}  // namespace mixtral::server
