// The `serve` subcommand's flags (CLI11), kept beside the server they configure.
#include <CLI/CLI.hpp>
#include <cctype>
#include <cstdint>

#include "mixtral/engine.h"
#include "server.h"

namespace mixtral::server {

namespace {

// "BYTES", or a number with the suffix K, M or G (also KiB, MiB, GiB; any case): 1024, 1024^2, 1024^3
// bytes. Rewrites s to the byte count; an error message otherwise.
std::string to_bytes(std::string& s) {
  size_t i = 0;
  uint64_t v = 0;
  for (; i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])); ++i) {
    v = v * 10 + static_cast<uint64_t>(s[i] - '0');
    if (v > static_cast<uint64_t>(INT64_MAX)) return "too large";
  }
  if (i == 0) return "'" + s + "' is not a size (BYTES, or a number with K, M or G: KiB, MiB, GiB)";
  std::string unit;
  for (; i < s.size(); ++i) unit += static_cast<char>(std::tolower(static_cast<unsigned char>(s[i])));
  int shift = 0;
  if (unit == "k" || unit == "kib")
    shift = 10;
  else if (unit == "m" || unit == "mib")
    shift = 20;
  else if (unit == "g" || unit == "gib")
    shift = 30;
  else if (!unit.empty())
    return "'" + s + "' is not a size (BYTES, or a number with K, M or G: KiB, MiB, GiB)";
  if (v > (static_cast<uint64_t>(INT64_MAX) >> shift)) return "too large";
  if (v == 0) return "must be more than 0 bytes";
  s = std::to_string(v << shift);
  return "";
}

}  // namespace

void add_serve_options(CLI::App* app, ServerOptions& o) {
  app->add_option("-m,--model", o.model,
                  "GGUF file, Hugging Face directory or Mistral consolidated directory")
      ->required();
  app->add_option("--host", o.host, "address to listen on")->capture_default_str();
  app->add_option("--port", o.port, "port (0: any free port)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  app->add_option("--parallel", o.parallel, "sequences decoded together (continuous batching)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  app->add_option("--step-tokens", o.step_tokens,
                  "tokens per forward step: the next token of every decoding sequence first, then prefill "
                  "chunks of new prompts up to this many (at least --parallel)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{65536}));
  app->add_option("-c,--ctx-size", o.ctx_size, "context size per sequence (default: min(trained, 4096))")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--api-key", o.api_key, "require 'Authorization: Bearer KEY'");
  app->add_option("-t,--threads", o.threads, "worker threads (default: all cores)")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--max-queue", o.max_queue, "waiting requests beyond --parallel before answering 429")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app->add_option("--timeout", o.request_timeout_s, "seconds one request may take in all")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app->add_option("--idle-timeout", o.idle_timeout_s, "seconds a connection may stay silent")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app->add_option("--cache-type", o.cache_type, "KV cache type of K and V: f32, f16 or q8_0")
      ->capture_default_str()
      ->check([](const std::string& s) -> std::string {
        return parse_kv_cache_type(s) ? "" : "'" + s + "' is not one of f32, f16, q8_0";
      });
  app->add_option("--kv-memory", o.kv_memory,
                  "bytes of the KV block pool, or with K, M, G: KiB, MiB, GiB (default: room for --parallel "
                  "full contexts of --ctx-size)")
      ->transform(CLI::Validator(to_bytes, "BYTES[K|M|G]", "size"));
  app->add_flag("--no-repack", o.no_repack,
                "use the weights where the file mapping holds them (by default they move to huge pages at "
                "load, Q4_0/Q8_0 repacked for the kernels: same values, faster)");
}

}  // namespace mixtral::server
