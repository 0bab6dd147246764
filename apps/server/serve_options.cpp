// The `serve` subcommand's flags (CLI11), kept beside the server they configure.
#include <CLI/CLI.hpp>

#include "server.h"

namespace mixtral::server {

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
  app->add_flag("--no-repack", o.no_repack,
                "use the weights where the file mapping holds them (by default they move to huge pages at "
                "load, Q4_0/Q8_0 repacked for the kernels: same values, faster)");
}

}  // namespace mixtral::server
