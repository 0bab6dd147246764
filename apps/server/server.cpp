#include "server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "mixtral/server_engine.h"
#include "mixtral/tokenizer.h"

namespace mixtral::server {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

json error_body(const std::string& message, const std::string& type, const json& param, const json& code) {
  return json{{"error", {{"message", message}, {"type", type}, {"param", param}, {"code", code}}}};
}

void send_error(httplib::Response& res, int status, const std::string& message, const json& param = nullptr,
                const std::string& type = "invalid_request_error", const json& code = nullptr) {
  res.status = status;
  res.set_content(dump(error_body(message, type, param, code)), "application/json");
}

// A 400 naming the offending field.
struct BadRequest {
  std::string message, param;
};

// ---- Request parsing -------------------------------------------------------------------------------

struct GenRequest {
  bool chat = true;
  std::string model;
  std::vector<ChatMessage> messages;
  std::string prompt_text;
  std::vector<int32_t> prompt_ids;
  std::optional<int64_t> max_tokens;
  CompletionParams params;
  std::vector<std::string> stop;
  bool logprobs = false;
  int top_logprobs = 0;
  bool stream = false, include_usage = false;
};

bool present(const json& b, const char* k) {
  return b.contains(k) && !b[k].is_null();
}

double get_number(const json& b, const char* k, double lo, double hi, double def) {
  if (!present(b, k)) return def;
  if (!b[k].is_number()) throw BadRequest{std::string("'") + k + "' must be a number", k};
  const double v = b[k].get<double>();
  if (!(v >= lo && v <= hi))
    throw BadRequest{
        std::string("'") + k + "' must be between " + json(lo).dump() + " and " + json(hi).dump(), k};
  return v;
}

int64_t get_int(const json& b, const char* k, int64_t lo, int64_t hi, int64_t def) {
  if (!present(b, k)) return def;
  if (!b[k].is_number_integer()) throw BadRequest{std::string("'") + k + "' must be an integer", k};
  const int64_t v = b[k].is_number_unsigned() && b[k].get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
                        ? INT64_MAX
                        : b[k].get<int64_t>();
  if (v < lo || v > hi)
    throw BadRequest{
        std::string("'") + k + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi), k};
  return v;
}

bool get_bool(const json& b, const char* k, bool def) {
  if (!present(b, k)) return def;
  if (!b[k].is_boolean()) throw BadRequest{std::string("'") + k + "' must be a boolean", k};
  return b[k].get<bool>();
}

std::string content_text(const json& c, const std::string& param) {
  if (c.is_string()) return c.get<std::string>();
  if (c.is_array()) {  // [{"type": "text", "text": "..."}]
    std::string out;
    for (const auto& part : c) {
      if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
          !part["text"].is_string())
        throw BadRequest{"only text content parts are supported", param};
      out += part["text"].get<std::string>();
    }
    return out;
  }
  throw BadRequest{"message content must be a string or an array of text parts", param};
}

GenRequest parse_request(const json& b, bool chat, int64_t ctx) {
  if (!b.is_object()) throw BadRequest{"the request body must be a JSON object", ""};
  GenRequest r;
  r.chat = chat;
  if (present(b, "model")) {
    if (!b["model"].is_string()) throw BadRequest{"'model' must be a string", "model"};
    r.model = b["model"].get<std::string>();
  }
  if (chat) {
    if (!present(b, "messages")) throw BadRequest{"'messages' is required", "messages"};
    if (!b["messages"].is_array() || b["messages"].empty())
      throw BadRequest{"'messages' must be a non-empty array", "messages"};
    for (size_t i = 0; i < b["messages"].size(); ++i) {
      const json& m = b["messages"][i];
      const std::string p = "messages[" + std::to_string(i) + "]";
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
        throw BadRequest{p + " must be an object with a string 'role'", p + ".role"};
      std::string role = m["role"].get<std::string>();
      if (role == "developer") role = "system";
      if (role != "system" && role != "user" && role != "assistant")
        throw BadRequest{p + ".role must be one of system, user, assistant", p + ".role"};
      const std::string text = m.contains("content") && !m["content"].is_null()
                                   ? content_text(m["content"], p + ".content")
                                   : throw BadRequest{p + ".content is required", p + ".content"};
      r.messages.push_back({role, text});
    }
  } else {
    if (!present(b, "prompt")) throw BadRequest{"'prompt' is required", "prompt"};
    const json& p = b["prompt"];
    if (p.is_string()) {
      r.prompt_text = p.get<std::string>();
    } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
      r.prompt_text = p[0].get<std::string>();
    } else if (p.is_array() && !p.empty() &&
               std::all_of(p.begin(), p.end(), [](const json& x) { return x.is_number_integer(); })) {
      for (const auto& x : p) r.prompt_ids.push_back(x.get<int32_t>());
    } else {
      throw BadRequest{"'prompt' must be a string, a list of one string or a list of token ids", "prompt"};
    }
  }
  if (present(b, "max_completion_tokens"))
    r.max_tokens = get_int(b, "max_completion_tokens", 1, INT64_MAX, 0);
  else if (present(b, "max_tokens"))
    r.max_tokens = get_int(b, "max_tokens", 1, INT64_MAX, 0);
  if (r.max_tokens && *r.max_tokens >= ctx)
    throw BadRequest{
        "the maximum number of tokens is " + std::to_string(ctx) + " (--ctx-size) including the prompt",
        present(b, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens"};
  CompletionParams& cp = r.params;
  cp.temperature = static_cast<float>(get_number(b, "temperature", 0, 2, 1));
  cp.top_p = static_cast<float>(get_number(b, "top_p", 0, 1, 1));
  if (cp.top_p <= 0) throw BadRequest{"'top_p' must be greater than 0", "top_p"};
  cp.top_k = get_int(b, "top_k", 0, INT32_MAX, 0);
  cp.min_p = static_cast<float>(get_number(b, "min_p", 0, 1, 0));
  cp.presence_penalty = static_cast<float>(get_number(b, "presence_penalty", -2, 2, 0));
  cp.frequency_penalty = static_cast<float>(get_number(b, "frequency_penalty", -2, 2, 0));
  cp.repetition_penalty = static_cast<float>(get_number(b, "repetition_penalty", 0, 10, 1));
  if (cp.repetition_penalty <= 0)
    throw BadRequest{"'repetition_penalty' must be greater than 0", "repetition_penalty"};
  if (present(b, "seed")) {
    if (!b["seed"].is_number_integer()) throw BadRequest{"'seed' must be an integer", "seed"};
    cp.seed = b["seed"].is_number_unsigned() ? b["seed"].get<uint64_t>()
                                             : static_cast<uint64_t>(b["seed"].get<int64_t>());
  } else {
    cp.seed = static_cast<uint64_t>(Clock::now().time_since_epoch().count());
  }
  if (get_int(b, "n", 1, INT32_MAX, 1) != 1) throw BadRequest{"only n = 1 is supported", "n"};
  cp.ignore_eos = get_bool(b, "ignore_eos", false);
  if (present(b, "stop")) {
    const json& s = b["stop"];
    if (s.is_string()) {
      r.stop.push_back(s.get<std::string>());
    } else if (s.is_array() && s.size() <= 4 &&
               std::all_of(s.begin(), s.end(), [](const json& x) { return x.is_string(); })) {
      for (const auto& x : s) r.stop.push_back(x.get<std::string>());
    } else {
      throw BadRequest{"'stop' must be a string or a list of at most 4 strings", "stop"};
    }
    for (const auto& x : r.stop)
      if (x.empty()) throw BadRequest{"'stop' strings must not be empty", "stop"};
  }
  if (chat) {
    r.logprobs = get_bool(b, "logprobs", false);
    r.top_logprobs = static_cast<int>(get_int(b, "top_logprobs", 0, 20, 0));
    if (present(b, "top_logprobs") && !r.logprobs)
      throw BadRequest{"'top_logprobs' needs 'logprobs': true", "top_logprobs"};
  } else if (present(b, "logprobs")) {  // legacy completions: an integer 0..5
    r.logprobs = true;
    r.top_logprobs = static_cast<int>(get_int(b, "logprobs", 0, 5, 0));
  }
  cp.top_logprobs = r.logprobs ? r.top_logprobs : -1;
  r.stream = get_bool(b, "stream", false);
  if (present(b, "stream_options")) {
    if (!b["stream_options"].is_object())
      throw BadRequest{"'stream_options' must be an object", "stream_options"};
    if (!r.stream) throw BadRequest{"'stream_options' is only allowed with 'stream': true", "stream_options"};
    r.include_usage = get_bool(b["stream_options"], "include_usage", false);
  }
  return r;
}

// ---- One request's events, from the engine thread to the HTTP thread -------------------------------

struct Channel {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<TokenEvent> events;
  bool done = false;
  std::atomic<bool> abandoned{false};
  BatchEngine::Callback callback() {
    return [this](const TokenEvent& ev) {
      {
        std::lock_guard<std::mutex> lk(mu);
        events.push_back(ev);
        if (ev.finish != FinishReason::kNone) done = true;
      }
      cv.notify_all();
      return !abandoned.load();
    };
  }
  // Next event, or nullopt at the deadline.
  std::optional<TokenEvent> next(Clock::time_point deadline) {
    std::unique_lock<std::mutex> lk(mu);
    if (!cv.wait_until(lk, deadline, [&] { return !events.empty(); })) return std::nullopt;
    TokenEvent ev = std::move(events.front());
    events.pop_front();
    return ev;
  }
};

// ---- Client liveness ---------------------------------------------------------------------------------
// cpp-httplib 0.11 tells a handler neither its socket nor that the client left, and writes to a peer
// that has only shut down its sending side succeed (Node's fetch does that on abort). So: find the
// request's socket among this process's descriptors by its two ports, and poll it for the peer's FIN.

int tcp_port(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return -1;
}

// True if fd is a TCP socket from local_port to the peer's remote_port.
bool is_connection(int fd, int local_port, int remote_port) {
  sockaddr_storage a{}, b{};
  socklen_t la = sizeof(a), lb = sizeof(b);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&a), &la) != 0) return false;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&b), &lb) != 0) return false;
  return tcp_port(a) == local_port && tcp_port(b) == remote_port;
}

// The descriptor of the request's connection, or -1 if it cannot be found.
int connection_fd(const httplib::Request& req) {
  if (req.local_port <= 0 || req.remote_port <= 0) return -1;
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  int found = -1;
  while (const dirent* e = readdir(d)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == dirfd(d)) continue;
    if (is_connection(static_cast<int>(fd), req.local_port, req.remote_port)) {
      found = static_cast<int>(fd);
      break;
    }
  }
  closedir(d);
  return found;
}

// False once the peer of connection fd (still the same connection) has closed or shut down its side.
bool peer_open(int fd, const httplib::Request& req) {
  if (fd < 0 || !is_connection(fd, req.local_port, req.remote_port)) return true;  // unknown: assume so
  pollfd p{fd, POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return true;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) == 0;
}

// ---- Metrics ---------------------------------------------------------------------------------------

struct Metrics {
  std::mutex mu;
  std::map<std::pair<std::string, int>, uint64_t> requests;  // (path, status) -> count
  void count(const std::string& path, int status) {
    std::lock_guard<std::mutex> lk(mu);
    ++requests[{path, status}];
  }
};

size_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  size_t pages = 0, rss = 0;
  f >> pages >> rss;
  return rss * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

// ---- The server ------------------------------------------------------------------------------------

class Server {
 public:
  Server(const ServerOptions& o, std::unique_ptr<Tokenizer> tok, std::unique_ptr<BatchEngine> eng)
      : o_(o), tok_(std::move(tok)), eng_(std::move(eng)) {
    model_id_ = std::filesystem::path(o.model).filename().string();
  }

  httplib::Server& http() { return svr_; }
  BatchEngine& engine() { return *eng_; }

  void setup() {
    const size_t n_threads = static_cast<size_t>(std::max(64, 8 * o_.parallel + 32));
    svr_.new_task_queue = [n_threads] { return new httplib::ThreadPool(n_threads); };
    svr_.set_payload_max_length(o_.max_body_bytes);
    svr_.set_read_timeout(o_.idle_timeout_s, 0);
    svr_.set_write_timeout(o_.idle_timeout_s, 0);
    svr_.set_keep_alive_timeout(5);
    svr_.set_keep_alive_max_count(1000);
    svr_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (o_.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
      if (req.get_header_value("Authorization") == "Bearer " + o_.api_key)
        return httplib::Server::HandlerResponse::Unhandled;
      send_error(res, 401, "invalid or missing API key (Authorization: Bearer KEY)", nullptr,
                 "invalid_request_error", "invalid_api_key");
      return httplib::Server::HandlerResponse::Handled;
    });
    svr_.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 404)
        send_error(res, 404, "no route for " + req.method + " " + req.path, nullptr, "not_found_error");
      else if (res.status == 413)
        send_error(res, 413, "the request body is too large", nullptr, "invalid_request_error");
      else
        send_error(res, res.status, "HTTP error " + std::to_string(res.status), nullptr,
                   "invalid_request_error");
    });
    svr_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      send_error(res, 500, what, nullptr, "server_error");
    });
    svr_.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      metrics_.count(req.path, res.status);
    });
    svr_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      if (shutting_down_) {
        send_error(res, 503, "shutting down", nullptr, "server_error");
        return;
      }
      res.set_content(R"({"status":"ok"})", "application/json");
    });
    svr_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      json m{{"id", model_id_}, {"object", "model"}, {"created", created_}, {"owned_by", "mixtral.cpp"}};
      res.set_content(dump(json{{"object", "list"}, {"data", json::array({m})}}), "application/json");
    });
    svr_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_text(), "text/plain; version=0.0.4");
    });
    svr_.Post("/v1/chat/completions",
              [this](const httplib::Request& req, httplib::Response& res) { generate(req, res, true); });
    svr_.Post("/v1/completions",
              [this](const httplib::Request& req, httplib::Response& res) { generate(req, res, false); });
  }

  void begin_shutdown() { shutting_down_ = true; }

 private:
  std::string token_piece(int32_t id) const {
    const std::string& p = tok_->piece(id);
    if (tok_->type(id) == TokenType::kControl) return "";
    if (p.size() == 6 && p.rfind("<0x", 0) == 0 && p[5] == '>')
      return std::string(1, static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16)));
    std::string out;
    for (size_t i = 0; i < p.size(); ++i) {
      if (p.compare(i, 3, "\xe2\x96\x81") == 0) {
        out += ' ';
        i += 2;
      } else {
        out += p[i];
      }
    }
    return out;
  }
  json token_logprob(int32_t id, float lp) const {
    const std::string t = token_piece(id);
    json bytes = json::array();
    for (unsigned char c : t) bytes.push_back(static_cast<int>(c));
    return json{{"token", t}, {"logprob", lp}, {"bytes", bytes}};
  }

  std::string metrics_text() {
    const BatchEngineStats s = eng_->stats();
    std::ostringstream o;
    o << "# HELP mixtral_requests_total HTTP requests by path and status.\n# TYPE mixtral_requests_total "
         "counter\n";
    {
      std::lock_guard<std::mutex> lk(metrics_.mu);
      for (const auto& [k, v] : metrics_.requests)
        o << "mixtral_requests_total{path=\"" << k.first << "\",status=\"" << k.second << "\"} " << v << "\n";
    }
    auto g = [&](const char* name, const char* type, const char* help, double v) {
      o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n"
        << name << " " << v << "\n";
    };
    g("mixtral_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.",
      static_cast<double>(s.prompt_tokens));
    g("mixtral_prompt_tokens_cached_total", "counter", "Prompt tokens taken from the prefix cache.",
      static_cast<double>(s.prompt_tokens_cached));
    g("mixtral_prompt_tokens_computed_total", "counter", "Prompt tokens evaluated.",
      static_cast<double>(s.prompt_tokens_computed));
    g("mixtral_generation_tokens_total", "counter", "Generated tokens.",
      static_cast<double>(s.generated_tokens));
    g("mixtral_steps_total", "counter", "Batched forward steps.", static_cast<double>(s.steps));
    g("mixtral_queue_depth", "gauge", "Requests waiting for a sequence slot.", static_cast<double>(s.queued));
    g("mixtral_active_sequences", "gauge", "Sequences being prefilled or decoded.",
      static_cast<double>(s.active));
    g("mixtral_generation_tokens_per_second", "gauge", "Generated tokens per second over the last 5 s.",
      s.gen_tokens_per_s);
    g("mixtral_kv_blocks_in_use", "gauge", "KV cache blocks referenced by sequences.",
      static_cast<double>(s.kv_blocks_in_use));
    g("mixtral_kv_blocks_cached", "gauge", "Unreferenced KV blocks kept for prefix reuse.",
      static_cast<double>(s.kv_blocks_cached));
    g("mixtral_kv_blocks_total", "gauge", "KV cache blocks in the pool.",
      static_cast<double>(s.kv_blocks_total));
    g("mixtral_kv_block_size", "gauge", "Positions per KV block.", static_cast<double>(s.block_size));
    g("mixtral_process_resident_memory_bytes", "gauge", "Resident set size.",
      static_cast<double>(resident_bytes()));
    o << "# HELP mixtral_expert_selections_total Tokens routed to each expert, per layer.\n"
         "# TYPE mixtral_expert_selections_total counter\n";
    for (int64_t l = 0; l < s.n_layers; ++l)
      for (int64_t e = 0; e < s.n_experts; ++e)
        o << "mixtral_expert_selections_total{layer=\"" << l << "\",expert=\"" << e << "\"} "
          << s.expert_selections[static_cast<size_t>(l * s.n_experts + e)] << "\n";
    return o.str();
  }

  // Text streaming with stop strings: hold back what could still become a stop string.
  struct TextState {
    std::string text;    // everything decoded so far (cut at a stop string)
    size_t emitted = 0;  // bytes of text already sent
    bool stopped = false;
  };
  void push_text(TextState& ts, const std::string& piece, const std::vector<std::string>& stop) {
    if (ts.stopped) return;
    const size_t from = ts.text.size();
    ts.text += piece;
    size_t cut = std::string::npos;
    for (const auto& s : stop) {
      const size_t start = from >= s.size() ? from - s.size() + 1 : 0;
      const size_t at = ts.text.find(s, start);
      if (at != std::string::npos) cut = std::min(cut, at);
    }
    if (cut != std::string::npos) {
      ts.text.resize(cut);
      ts.stopped = true;
    }
  }
  // Bytes of ts.text that can be sent now.
  size_t sendable(const TextState& ts, const std::vector<std::string>& stop, bool final) const {
    if (final || ts.stopped || stop.empty()) return ts.text.size();
    size_t hold = 0;  // longest suffix of text that is a proper prefix of a stop string
    for (const auto& s : stop)
      for (size_t k = std::min(s.size() - 1, ts.text.size()); k > hold; --k)
        if (ts.text.compare(ts.text.size() - k, k, s, 0, k) == 0) {
          hold = k;
          break;
        }
    size_t n = ts.text.size() - hold;
    while (n > ts.emitted && n < ts.text.size() && (static_cast<unsigned char>(ts.text[n]) & 0xC0) == 0x80)
      --n;
    return std::max(n, ts.emitted);
  }

  void generate(const httplib::Request& req, httplib::Response& res, bool chat) {
    if (shutting_down_) {
      res.set_header("Retry-After", "5");
      return send_error(res, 503, "the server is shutting down", nullptr, "server_error");
    }
    json body = json::parse(req.body, nullptr, false);
    if (body.is_discarded()) return send_error(res, 400, "the request body is not valid JSON");
    std::shared_ptr<GenRequest> r;
    try {
      r = std::make_shared<GenRequest>(parse_request(body, chat, eng_->ctx_size()));
      if (chat) {
        auto ids = tok_->apply_chat(r->messages, tok_->default_chat_format());
        if (!ids) throw BadRequest{ids.error().message, "messages"};
        r->params.prompt = std::move(*ids);
      } else if (r->prompt_ids.empty()) {
        auto ids = tok_->encode(r->prompt_text, tok_->add_bos());
        if (!ids) throw BadRequest{ids.error().message, "prompt"};
        r->params.prompt = std::move(*ids);
      } else {
        for (int32_t id : r->prompt_ids)
          if (id < 0 || id >= tok_->n_vocab()) throw BadRequest{"prompt token id out of range", "prompt"};
        r->params.prompt = r->prompt_ids;
      }
    } catch (const BadRequest& e) {
      return send_error(res, 400, e.message, e.param.empty() ? json(nullptr) : json(e.param));
    }
    const int64_t n_prompt = static_cast<int64_t>(r->params.prompt.size());
    if (n_prompt >= eng_->ctx_size())
      return send_error(res, 400,
                        "the prompt has " + std::to_string(n_prompt) + " tokens, more than the context of " +
                            std::to_string(eng_->ctx_size()) + " tokens allows (--ctx-size)",
                        chat ? "messages" : "prompt", "invalid_request_error", "context_length_exceeded");
    if (r->max_tokens && n_prompt + *r->max_tokens > eng_->ctx_size())
      return send_error(res, 400,
                        "the prompt (" + std::to_string(n_prompt) + " tokens) plus max_tokens (" +
                            std::to_string(*r->max_tokens) + ") exceeds the context of " +
                            std::to_string(eng_->ctx_size()) + " tokens",
                        "max_tokens", "invalid_request_error", "context_length_exceeded");
    r->params.max_tokens = r->max_tokens.value_or(eng_->ctx_size() - n_prompt);

    auto ch = std::make_shared<Channel>();
    const auto sub = eng_->submit(r->params, [ch](const TokenEvent& ev) { return ch->callback()(ev); });
    switch (sub.status) {
      case BatchEngine::Submit::kOk:
        break;
      case BatchEngine::Submit::kQueueFull:
        res.set_header("Retry-After", "1");
        return send_error(res, 429, sub.message, nullptr, "rate_limit_error", "queue_full");
      case BatchEngine::Submit::kShuttingDown:
        res.set_header("Retry-After", "5");
        return send_error(res, 503, sub.message, nullptr, "server_error");
      case BatchEngine::Submit::kTooLong:
        return send_error(res, 400, sub.message, chat ? "messages" : "prompt", "invalid_request_error",
                          "context_length_exceeded");
      case BatchEngine::Submit::kBadRequest:
        return send_error(res, 400, sub.message, chat ? "messages" : "prompt");
    }
    const uint64_t id = sub.id;
    const std::string rid = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(id);
    const auto created = static_cast<int64_t>(std::time(nullptr));
    const std::string model = r->model.empty() ? model_id_ : r->model;
    const auto deadline = Clock::now() + std::chrono::seconds(o_.request_timeout_s);
    BatchEngine* eng = eng_.get();
    // When the response ends without having been sent whole (the client left): free the sequence.
    auto release = [ch, eng, id](bool success) {
      if (!success) {
        ch->abandoned = true;
        eng->cancel(id);
      }
    };

    if (!r->stream) {
      // One JSON object, sent chunked: while it is being generated the server writes a space (JSON
      // allows leading whitespace) every kHeartbeat, so a client that has gone away fails a write and its
      // sequence is freed then, not when max_tokens or the timeout would end it.
      res.set_chunked_content_provider(
          "application/json",
          [this, r, ch, id, rid, created, model, deadline, chat, release, &req](size_t,
                                                                                httplib::DataSink& sink) {
            const int fd = connection_fd(req);
            GenResult g = collect(*r, *ch, id, deadline, nullptr,
                                  [&] { return peer_open(fd, req) && sink.write(" ", 1); });
            if (g.disconnected) {  // the client went away: free its sequence now
              release(false);
              return false;
            }
            json choice{{"index", 0}, {"finish_reason", g.finish}};
            if (chat) {
              choice["message"] = {{"role", "assistant"}, {"content", g.text}};
              choice["logprobs"] = r->logprobs ? json{{"content", g.logprobs}} : json(nullptr);
            } else {
              choice["text"] = g.text;
              choice["logprobs"] = r->logprobs ? g.legacy_logprobs : json(nullptr);
            }
            json out{{"id", rid},
                     {"object", chat ? "chat.completion" : "text_completion"},
                     {"created", created},
                     {"model", model},
                     {"choices", json::array({choice})},
                     {"usage", usage(g)}};
            const std::string body = dump(out);
            sink.write(body.data(), body.size());
            sink.done();
            return true;
          },
          release);
      return;
    }

    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, r, ch, id, rid, created, model, deadline, chat, release, &req](size_t,
                                                                              httplib::DataSink& sink) {
          auto send = [&](const json& j) {
            const std::string s = "data: " + dump(j) + "\n\n";
            return sink.write(s.data(), s.size());
          };
          auto chunk = [&](json delta_or_text, json logprobs, json finish) {
            json c{{"index", 0}, {"logprobs", logprobs}, {"finish_reason", finish}};
            if (chat)
              c["delta"] = std::move(delta_or_text);
            else
              c["text"] = std::move(delta_or_text);
            return json{{"id", rid},
                        {"object", chat ? "chat.completion.chunk" : "text_completion"},
                        {"created", created},
                        {"model", model},
                        {"choices", json::array({c})}};
          };
          bool ok = true;
          if (chat) ok = send(chunk(json{{"role", "assistant"}, {"content", ""}}, nullptr, nullptr));
          GenResult g;
          if (ok) {
            const int fd = connection_fd(req);
            g = collect(
                *r, *ch, id, deadline,
                [&](const std::string& text, const json& lps) {
                  json lp = nullptr;
                  if (r->logprobs) lp = chat ? json{{"content", lps}} : legacy_from(lps);
                  return send(chunk(chat ? json{{"content", text}} : json(text), lp, nullptr));
                },
                // a half-closed client still accepts writes: look for its FIN as well
                [&] { return peer_open(fd, req); });
          }
          if (!ok || g.disconnected) {  // the client went away: free its sequence now
            release(false);
            return false;
          }
          ok = send(chunk(chat ? json::object() : json(""), nullptr, g.finish));
          if (ok && r->include_usage) {
            json u{{"id", rid},
                   {"object", chat ? "chat.completion.chunk" : "text_completion"},
                   {"created", created},
                   {"model", model},
                   {"choices", json::array()},
                   {"usage", usage(g)}};
            ok = send(u);
          }
          if (ok) {
            const std::string done = "data: [DONE]\n\n";
            sink.write(done.data(), done.size());
          }
          sink.done();
          return true;
        },
        release);
  }

  struct GenResult {
    std::string text;
    std::string finish = "length";
    json logprobs = json::array();  // chat form: [{token, logprob, bytes, top_logprobs}]
    json legacy_logprobs;
    int64_t prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;
    bool disconnected = false;
  };
  static json usage(const GenResult& g) {
    return json{{"prompt_tokens", g.prompt_tokens},
                {"completion_tokens", g.completion_tokens},
                {"total_tokens", g.prompt_tokens + g.completion_tokens},
                {"prompt_tokens_details", {{"cached_tokens", g.cached_tokens}}}};
  }
  static json legacy_from(const json& lps) {
    json l{{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()}};
    for (const auto& e : lps) {
      l["tokens"].push_back(e["token"]);
      l["token_logprobs"].push_back(e["logprob"]);
      json top = json::object();
      for (const auto& t : e["top_logprobs"]) top[t["token"].get<std::string>()] = t["logprob"];
      l["top_logprobs"].push_back(top);
    }
    return l;
  }

  // Drains a request's events into text (stop strings applied) and logprobs; with on_delta, streams
  // each sendable piece (returning false when the client is gone).
  // alive (if given) is called once every kHeartbeat, whether events arrive or not; false means the client
  // is gone.
  using OnDelta = std::function<bool(const std::string&, const json&)>;
  static constexpr std::chrono::milliseconds kHeartbeat{250};
  GenResult collect(const GenRequest& r, Channel& ch, uint64_t id, Clock::time_point deadline,
                    const OnDelta& on_delta, const std::function<bool()>& alive = nullptr) {
    GenResult g;
    g.prompt_tokens = static_cast<int64_t>(r.params.prompt.size());
    StreamingDecoder dec(*tok_, /*at_sequence_start=*/r.chat);
    TextState ts;
    json pending_lps = json::array();  // logprobs of tokens whose text is not sent yet
    bool finished = false;
    auto next_beat = Clock::now() + kHeartbeat;
    while (!finished) {
      std::optional<TokenEvent> ev;
      for (;;) {
        ev = ch.next(alive ? std::min(deadline, next_beat) : deadline);
        if (alive && Clock::now() >= next_beat) {
          next_beat = Clock::now() + kHeartbeat;
          if (!alive()) {
            g.disconnected = true;
            return g;
          }
        }
        if (ev || Clock::now() >= deadline) break;
      }
      if (!ev) {  // total timeout: cancel and answer with what there is
        eng_->cancel(id);
        ch.abandoned = true;
        g.finish = "length";
        break;
      }
      g.cached_tokens = ev->cached_tokens;
      if (ev->token >= 0 && !ts.stopped) {
        ++g.completion_tokens;
        auto piece = dec.push(ev->token);
        if (piece) push_text(ts, *piece, r.stop);
        if (r.logprobs) {
          json e = token_logprob(ev->token, ev->logprob);
          json top = json::array();
          for (const auto& [t, lp] : ev->top) top.push_back(token_logprob(t, lp));
          e["top_logprobs"] = top;
          g.logprobs.push_back(e);
          pending_lps.push_back(e);
        }
      }
      if (ev->finish != FinishReason::kNone) {
        finished = true;
        if (ev->finish == FinishReason::kStop) g.finish = "stop";
        if (!ts.stopped) push_text(ts, dec.finish(), r.stop);
      }
      if (ts.stopped) {
        g.finish = "stop";
        if (!finished) {  // a stop string: end the sequence now; later events are ignored
          ch.abandoned = true;
          eng_->cancel(id);
          finished = true;
        }
      }
      if (on_delta) {
        const size_t n = sendable(ts, r.stop, finished);
        if (n > ts.emitted || (!pending_lps.empty() && finished)) {
          if (!on_delta(ts.text.substr(ts.emitted, n - ts.emitted), pending_lps)) {
            g.disconnected = true;
            return g;
          }
          ts.emitted = n;
          pending_lps = json::array();
        }
      }
    }
    g.text = ts.text;
    if (!r.chat) g.legacy_logprobs = legacy_from(g.logprobs);
    return g;
  }

  ServerOptions o_;
  std::unique_ptr<Tokenizer> tok_;
  std::unique_ptr<BatchEngine> eng_;
  httplib::Server svr_;
  Metrics metrics_;
  std::string model_id_;
  int64_t created_ = static_cast<int64_t>(std::time(nullptr));
  std::atomic<bool> shutting_down_{false};
};

}  // namespace

int serve(const ServerOptions& o) {
  // SIGINT/SIGTERM go to one waiting thread (blocked here, inherited by every thread started below).
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto tok = Tokenizer::load(o.model);
  if (!tok) {
    std::fprintf(stderr, "mixtral: error: %s\n", tok.error().message.c_str());
    return tok.error().exit_code();
  }
  BatchEngineOptions eo;
  eo.model_path = o.model;
  eo.threads = o.threads;
  eo.ctx_size = o.ctx_size;
  eo.parallel = o.parallel;
  eo.max_queue = o.max_queue;
  eo.repack = !o.no_repack;
  auto eng = BatchEngine::load(eo);
  if (!eng) {
    std::fprintf(stderr, "mixtral: error: %s\n", eng.error().message.c_str());
    return eng.error().exit_code();
  }
  Server s(o, std::move(*tok), std::move(*eng));
  s.setup();
  int port = o.port;
  if (port == 0) {
    port = s.http().bind_to_any_port(o.host);
    if (port < 0) port = 0;
  } else if (!s.http().bind_to_port(o.host, port)) {
    port = 0;
  }
  if (port == 0) {
    std::fprintf(stderr, "mixtral: error: cannot listen on %s:%d\n", o.host.c_str(), o.port);
    return 1;
  }
  std::fprintf(stderr, "mixtral serve: listening on http://%s:%d (model %s, parallel %d, context %lld)\n",
               o.host.c_str(), port, o.model.c_str(), o.parallel,
               static_cast<long long>(s.engine().ctx_size()));
  std::atomic<bool> stopped{false};
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    if (stopped) return;
    std::fprintf(stderr, "mixtral serve: signal %d: finishing in-flight requests\n", sig);
    s.begin_shutdown();
    s.engine().shutdown(o.shutdown_grace_s);  // waits for in-flight requests, cancels the rest
    s.http().stop();
  });
  s.http().listen_after_bind();
  stopped = true;
  pthread_kill(waiter.native_handle(), SIGTERM);  // wakes the waiter if listen ended without a signal
  waiter.join();
  std::fprintf(stderr, "mixtral serve: stopped\n");
  return 0;
}

}  // namespace mixtral::server
