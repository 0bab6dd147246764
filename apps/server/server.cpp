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

#include <algorithm>
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

#include "grammar/grammar.h"
#include "grammar/json_schema.h"
#include "mixtral/server_engine.h"
#include "mixtral/tokenizer.h"
#include "request.h"
#include "responses.h"
#include "stop.h"
#include "tools.h"

namespace mixtral::server {

namespace {

using json = nlohmann::ordered_json;
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

// ---- One request's events, from the engine thread to the HTTP thread -------------------------------

// Events of all choices of one request, tagged with the choice's index.
struct Channel {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<int, TokenEvent>> events;  // (choice, event)
  std::atomic<bool> abandoned{false};             // the client left: every sequence stops
  bool push(int choice, const TokenEvent& ev) {
    {
      std::lock_guard<std::mutex> lk(mu);
      events.emplace_back(choice, ev);
    }
    cv.notify_all();
    return !abandoned.load();
  }
  // Next event, or nullopt at the deadline.
  std::optional<std::pair<int, TokenEvent>> next(Clock::time_point deadline) {
    std::unique_lock<std::mutex> lk(mu);
    if (!cv.wait_until(lk, deadline, [&] { return !events.empty(); })) return std::nullopt;
    auto ev = std::move(events.front());
    events.pop_front();
    return ev;
  }
};

// The sequences of one request's choices (ids of those submitted), shared with the response's releaser.
struct Sequences {
  std::mutex mu;
  std::vector<uint64_t> ids;  // [n] 0: not submitted
  void cancel_all(BatchEngine& eng) {
    std::lock_guard<std::mutex> lk(mu);
    for (uint64_t id : ids)
      if (id != 0) eng.cancel(id);
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
    if (tok_->has_tool_tokens()) tool_calls_id_ = tok_->piece_to_id("[TOOL_CALLS]");
    byte_space_id_ = tok_->piece_to_id("<0x20>");
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
      res.set_content(dump(health_json()), "application/json");
    });
    svr_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(dump(json{{"object", "list"}, {"data", json::array({model_json()})}}),
                      "application/json");
    });
    svr_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_text(), "text/plain; version=0.0.4");
    });
    svr_.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      const std::string id = req.matches[1];
      if (id != model_id_)
        return send_error(res, 404,
                          "The model '" + id + "' does not exist (this server serves '" + model_id_ + "')",
                          "model", "invalid_request_error", "model_not_found");
      res.set_content(dump(model_json()), "application/json");
    });
    svr_.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      generate(req, res, Endpoint::kChat);
    });
    svr_.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      generate(req, res, Endpoint::kCompletions);
    });
    svr_.Post("/v1/responses", [this](const httplib::Request& req, httplib::Response& res) {
      generate(req, res, Endpoint::kResponses);
    });
  }

  void begin_shutdown() { shutting_down_ = true; }

 private:
  json model_json() const {
    return json{{"id", model_id_}, {"object", "model"}, {"created", created_}, {"owned_by", "mixtral.cpp"}};
  }
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

  // GET /health: status and the KV block pool.
  json health_json() const {
    const BatchEngineStats s = eng_->stats();
    return json{{"status", "ok"},
                {"kv_cache",
                 {{"type", s.kv_cache_type},
                  {"block_size", s.block_size},
                  {"blocks_total", s.kv_blocks_total},
                  {"blocks_in_use", s.kv_blocks_in_use},
                  {"blocks_cached", s.kv_blocks_cached},
                  {"bytes_total", s.kv_bytes_total},
                  {"bytes_per_token", s.kv_bytes_per_token}}}};
  }

  std::string metrics_text() {
    const BatchEngineStats s = eng_->stats();
    std::ostringstream o;
    o.precision(15);  // counts and byte sizes below 10^15 print as exact integers
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
    g("mixtral_kv_cache_bytes", "gauge", "Bytes of the KV block pool (K and V, every layer).",
      static_cast<double>(s.kv_bytes_total));
    g("mixtral_kv_cache_bytes_per_token", "gauge", "KV cache bytes of one position (K and V, every layer).",
      static_cast<double>(s.kv_bytes_per_token));
    o << "# HELP mixtral_kv_cache_info The KV cache type (K and V).\n# TYPE mixtral_kv_cache_info gauge\n"
      << "mixtral_kv_cache_info{type=\"" << s.kv_cache_type << "\"} 1\n";
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

  enum class Endpoint { kChat, kCompletions, kResponses };

  // One choice of a request as it is generated.
  struct ChoiceState {
    ChoiceState(const Tokenizer& tok, bool chat, const std::vector<std::string>& stop, ToolFormat fmt,
                bool calls_possible)
        : dec(tok, /*at_sequence_start=*/chat), ts(stop), reader(fmt, calls_possible) {}
    StreamingDecoder dec;
    StopText ts;  // the text, cut at a stop string, and what of it was passed on
    ReplyReader reader;
    json logprobs = json::array();     // chat form: [{token, logprob, bytes, top_logprobs}]
    json pending_lps = json::array();  // logprobs of tokens whose text is not sent yet
    int64_t completion_tokens = 0, cached_tokens = 0;
    std::string finish = "length";
    bool done = false;
    bool at_start = true;  // no token with bytes yet
  };

  // A request admitted to the engine: its choices and where their events arrive.
  struct Job {
    Endpoint endpoint = Endpoint::kChat;
    std::shared_ptr<GenRequest> r;
    std::shared_ptr<ResponsesRequest> rr;  // kResponses
    GrammarPlan plan;
    ToolFormat fmt = ToolFormat::kGeneric;
    std::shared_ptr<Channel> ch = std::make_shared<Channel>();
    std::shared_ptr<Sequences> seqs = std::make_shared<Sequences>();
    std::vector<ChoiceState> choices;
    bool rest_submitted = false;  // choices 1..n-1 (submitted once choice 0's prompt is in the cache)
    std::string id, model;
    int64_t created = 0;
    Clock::time_point deadline;
    int64_t prompt_tokens = 0;
    std::string error;  // set when a choice ended in an error (FinishReason::kGrammarError): no answer
    // run()'s progress (run can return early at pause_at and be called again)
    int n_done = 0;
    int retry_from = -1;  // deferred choices from here wait for room in the queue
    bool paused = false;  // the last run() returned at its pause_at, before the end
  };

  // Parses and validates a request into a job, compiling its grammar; a BadRequest names the field.
  std::shared_ptr<Job> make_job(const json& body, Endpoint ep) {
    auto job = std::make_shared<Job>();
    job->endpoint = ep;
    const int64_t ctx = eng_->ctx_size();
    if (ep == Endpoint::kResponses) {
      job->rr = std::make_shared<ResponsesRequest>(parse_responses_request(body, ctx));
      job->r = std::shared_ptr<GenRequest>(job->rr, &job->rr->gen);
    } else {
      job->r = std::make_shared<GenRequest>(ep == Endpoint::kChat ? parse_chat_request(body, ctx)
                                                                  : parse_completion_request(body, ctx));
    }
    GenRequest& r = *job->r;
    check_logit_bias_ids(r.params, tok_->n_vocab());
    job->fmt = tok_->has_tool_tokens() ? ToolFormat::kV3 : ToolFormat::kGeneric;
    if (r.chat) {
      ChatOptions co;
      for (const Tool& t : r.tools) co.tools.push_back(t.spec);
      auto ids = tok_->apply_chat(r.messages, tok_->default_chat_format(), co);
      if (!ids) throw BadRequest{ids.error().message, ep == Endpoint::kResponses ? "input" : "messages"};
      r.params.prompt = std::move(*ids);
    } else if (r.prompt_ids.empty()) {
      auto ids = tok_->encode(r.prompt_text, tok_->add_bos());
      if (!ids) throw BadRequest{ids.error().message, "prompt"};
      r.params.prompt = std::move(*ids);
    } else {
      for (int32_t id : r.prompt_ids)
        if (id < 0 || id >= tok_->n_vocab()) throw BadRequest{"prompt token id out of range", "prompt"};
      r.params.prompt = r.prompt_ids;
    }
    job->plan = build_grammar(r, job->fmt);
    if (!job->plan.gbnf.empty()) {
      grammar::GbnfOptions go;
      go.optional_leading_space = r.chat;  // chat answers drop the dummy-prefix space
      const Tokenizer* tok = tok_.get();
      go.token_id = [tok](std::string_view piece) -> int32_t {
        const int32_t id = tok->piece_to_id(piece);
        return id >= 0 && tok->type(id) == TokenType::kControl ? id : -1;
      };
      auto g = grammar::parse_gbnf(job->plan.gbnf, go);
      if (!g) throw BadRequest{"'" + job->plan.param + "': " + g.error().message, job->plan.param};
      r.params.grammar = *g;
    }
    for (int i = 0; i < r.n; ++i)
      job->choices.emplace_back(*tok_, r.chat, r.stop, job->fmt, job->plan.calls_possible);
    job->seqs->ids.assign(static_cast<size_t>(r.n), 0);
    return job;
  }

  BatchEngine::SubmitResult submit_choice(Job& job, int i) {
    CompletionParams p = job.r->params;
    p.seed += static_cast<uint64_t>(i);
    auto ch = job.ch;
    auto sub = eng_->submit(std::move(p), [ch, i](const TokenEvent& ev) { return ch->push(i, ev); });
    if (sub.status == BatchEngine::Submit::kOk) {
      std::lock_guard<std::mutex> lk(job.seqs->mu);
      job.seqs->ids[static_cast<size_t>(i)] = sub.id;
    }
    return sub;
  }

  // Called with a choice's new reply events and logprobs, and its finish reason once it ends ("" before).
  // False: the client is gone.
  using OnEvents =
      std::function<bool(int, const std::vector<ReplyEvent>&, const json& lps, const std::string& finish)>;
  static constexpr std::chrono::milliseconds kHeartbeat{250};
  // A non-streaming answer is held this long before its status line is sent (see generate).
  static constexpr std::chrono::seconds kHoldStatus{5};

  static std::string grammar_error_message(int64_t generated) {
    return "the output grammar allowed no next token after " + std::to_string(generated) +
           " generated tokens: the grammar has a dead end, or matching it needs more than the matcher's "
           "limit of 4096 parse stacks (e.g. a very large or ambiguous enum/anyOf); no answer was produced";
  }

  // Drives every choice of the job to its end, or until pause_at (then job.paused; call again to go on).
  // alive (if given) is called once every kHeartbeat; false means the client is gone. Returns false when
  // the client went away (the caller frees the sequences).
  bool run(Job& job, const OnEvents& on_events, const std::function<bool()>& alive,
           Clock::time_point pause_at = Clock::time_point::max()) {
    GenRequest& r = *job.r;
    const int n = r.n;
    int& n_done = job.n_done;
    int& retry_from = job.retry_from;
    job.paused = false;
    auto submit_rest = [&](int from) {
      retry_from = -1;
      for (int i = from; i < n; ++i) {
        const auto sub = submit_choice(job, i);
        if (sub.status == BatchEngine::Submit::kQueueFull) {
          retry_from = i;
          return;
        }
        if (sub.status != BatchEngine::Submit::kOk) {  // shutting down: the choice ends empty
          job.choices[static_cast<size_t>(i)].done = true;
          ++n_done;
          if (on_events && !on_events(i, {}, json::array(), "length")) return;
        }
      }
    };
    auto next_beat = Clock::now() + kHeartbeat;
    const int32_t tool_calls_id = tool_calls_id_;
    const bool lead_space = r.chat && r.params.grammar != nullptr;
    while (n_done < n) {
      std::optional<std::pair<int, TokenEvent>> item;
      for (;;) {
        item = job.ch->next(std::min({job.deadline, next_beat, pause_at}));
        if (Clock::now() >= next_beat) {
          next_beat = Clock::now() + kHeartbeat;
          if (alive && !alive()) return false;
          if (retry_from >= 0) submit_rest(retry_from);
        }
        if (item || Clock::now() >= job.deadline || Clock::now() >= pause_at) break;
      }
      if (!item && Clock::now() < job.deadline) {  // pause_at
        job.paused = true;
        return true;
      }
      if (!item) {  // total timeout: cancel and answer with what there is
        job.ch->abandoned = true;
        job.seqs->cancel_all(*eng_);
        for (int i = 0; i < n; ++i) {
          ChoiceState& c = job.choices[static_cast<size_t>(i)];
          if (c.done) continue;
          c.done = true;
          if (on_events && !on_events(i, c.reader.push(c.ts.take_rest()), c.pending_lps, "length"))
            return false;
        }
        break;
      }
      const int i = item->first;
      const TokenEvent& ev = item->second;
      ChoiceState& c = job.choices[static_cast<size_t>(i)];
      if (i == 0 && !job.rest_submitted) {  // choice 0's prompt is prefilled: the others share its blocks
        job.rest_submitted = true;
        submit_rest(1);
      }
      if (c.done) continue;  // after a stop string ended it
      c.cached_tokens = ev.cached_tokens;
      if (ev.token >= 0 && !c.ts.stopped()) {
        ++c.completion_tokens;
        if (ev.token == tool_calls_id) c.reader.push_tool_calls_token();
        // A chat grammar allows one leading space for the dummy prefix the decoder drops; when the model
        // spells it as the byte token <0x20> instead, the decoder keeps it: drop it here, so the client
        // sees exactly a sentence of the grammar.
        const bool skip = c.at_start && lead_space && ev.token == byte_space_id_;
        if (tok_->type(ev.token) != TokenType::kControl) c.at_start = false;
        auto piece = c.dec.push(ev.token);
        if (piece && !skip) c.ts.push(*piece);
        if (r.logprobs) {
          json e = token_logprob(ev.token, ev.logprob);
          json top = json::array();
          for (const auto& [t, lp] : ev.top) top.push_back(token_logprob(t, lp));
          e["top_logprobs"] = top;
          c.logprobs.push_back(e);
          c.pending_lps.push_back(e);
        }
      }
      if (ev.finish == FinishReason::kGrammarError) {  // the whole request fails: stop every choice
        job.error = grammar_error_message(c.completion_tokens);
        job.ch->abandoned = true;
        job.seqs->cancel_all(*eng_);
        break;
      }
      bool finished = false;
      if (ev.finish != FinishReason::kNone) {
        finished = true;
        if (ev.finish == FinishReason::kStop) c.finish = "stop";
        if (!c.ts.stopped()) c.ts.push(c.dec.finish());
      }
      if (c.ts.stopped()) {
        c.finish = "stop";
        if (!finished) {  // a stop string: end the sequence now; later events are ignored
          std::lock_guard<std::mutex> lk(job.seqs->mu);
          eng_->cancel(job.seqs->ids[static_cast<size_t>(i)]);
          finished = true;
        }
      }
      std::vector<ReplyEvent> evs = c.reader.push(c.ts.take(finished));
      if (finished) {
        for (auto& e : c.reader.flush()) evs.push_back(std::move(e));
        c.done = true;
        ++n_done;
        if (c.reader.finish().calls_complete) c.finish = "tool_calls";
      }
      if (on_events && (!evs.empty() || finished)) {
        if (!on_events(i, evs, c.pending_lps, finished ? c.finish : "")) return false;
        c.pending_lps = json::array();
      }
    }
    job.prompt_tokens = static_cast<int64_t>(r.params.prompt.size());
    return true;
  }

  json usage(const Job& job) const {
    int64_t completion = 0;
    for (const auto& c : job.choices) completion += c.completion_tokens;
    const int64_t cached = job.choices.empty() ? 0 : job.choices[0].cached_tokens;
    return json{{"prompt_tokens", job.prompt_tokens},
                {"completion_tokens", completion},
                {"total_tokens", job.prompt_tokens + completion},
                {"prompt_tokens_details", {{"cached_tokens", cached}}}};
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
  static json tool_calls_json(const std::vector<ToolCall>& calls) {
    json a = json::array();
    for (const auto& c : calls)
      a.push_back(
          {{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
    return a;
  }

  // The whole answer of a finished job (non-streaming).
  json answer(const Job& job) const {
    const GenRequest& r = *job.r;
    const bool chat = job.endpoint == Endpoint::kChat;
    json choices = json::array();
    for (size_t i = 0; i < job.choices.size(); ++i) {
      const ChoiceState& c = job.choices[i];
      json choice{{"index", i}, {"finish_reason", c.finish}};
      if (chat) {
        const ReplyReader::Final f = c.reader.finish();
        json msg{{"role", "assistant"},
                 {"content", f.content ? json(*f.content) : json(nullptr)},
                 {"refusal", nullptr}};
        if (!f.calls.empty()) msg["tool_calls"] = tool_calls_json(f.calls);
        choice["message"] = msg;
        choice["logprobs"] = r.logprobs ? json{{"content", c.logprobs}} : json(nullptr);
      } else {
        choice["text"] = c.ts.text();
        choice["logprobs"] = r.logprobs ? legacy_from(c.logprobs) : json(nullptr);
      }
      choices.push_back(choice);
    }
    return json{{"id", job.id},           {"object", chat ? "chat.completion" : "text_completion"},
                {"created", job.created}, {"model", job.model},
                {"choices", choices},     {"usage", usage(job)}};
  }

  ResponseUsage response_usage(const Job& job) const {
    ResponseUsage u;
    u.input_tokens = job.prompt_tokens;
    u.output_tokens = job.choices[0].completion_tokens;
    u.cached_tokens = job.choices[0].cached_tokens;
    return u;
  }

  void generate(const httplib::Request& req, httplib::Response& res, Endpoint ep) {
    if (shutting_down_) {
      res.set_header("Retry-After", "5");
      return send_error(res, 503, "the server is shutting down", nullptr, "server_error");
    }
    json body = mixtral::parse_ordered_json(req.body);  // members in the client's order, in linear time
    if (body.is_discarded()) return send_error(res, 400, "the request body is not valid JSON");
    std::shared_ptr<Job> job;
    try {
      job = make_job(body, ep);
    } catch (const BadRequest& e) {
      return send_error(res, 400, e.message, e.param.empty() ? json(nullptr) : json(e.param));
    }
    GenRequest& r = *job->r;
    const bool chat_like = r.chat;
    const char* prompt_param = ep == Endpoint::kResponses ? "input" : chat_like ? "messages" : "prompt";
    const int64_t n_prompt = static_cast<int64_t>(r.params.prompt.size());
    if (n_prompt >= eng_->ctx_size())
      return send_error(res, 400,
                        "the prompt has " + std::to_string(n_prompt) + " tokens, more than the context of " +
                            std::to_string(eng_->ctx_size()) + " tokens allows (--ctx-size)",
                        prompt_param, "invalid_request_error", "context_length_exceeded");
    if (r.max_tokens && n_prompt + *r.max_tokens > eng_->ctx_size())
      return send_error(res, 400,
                        "the prompt (" + std::to_string(n_prompt) + " tokens) plus " + r.max_tokens_param +
                            " (" + std::to_string(*r.max_tokens) + ") exceeds the context of " +
                            std::to_string(eng_->ctx_size()) + " tokens",
                        r.max_tokens_param, "invalid_request_error", "context_length_exceeded");
    r.params.max_tokens = r.max_tokens.value_or(eng_->ctx_size() - n_prompt);
    job->prompt_tokens = n_prompt;

    const auto sub = submit_choice(*job, 0);
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
        return send_error(res, 400, sub.message, prompt_param, "invalid_request_error",
                          "context_length_exceeded");
      case BatchEngine::Submit::kBadRequest:
        return send_error(res, 400, sub.message, prompt_param);
    }
    if (r.n == 1) job->rest_submitted = true;
    job->id = ep == Endpoint::kChat        ? "chatcmpl-" + std::to_string(sub.id)
              : ep == Endpoint::kResponses ? "resp_" + std::to_string(sub.id) + "_" + make_call_id()
                                           : "cmpl-" + std::to_string(sub.id);
    job->created = static_cast<int64_t>(std::time(nullptr));
    job->model = r.model.empty() ? model_id_ : r.model;
    job->deadline = Clock::now() + std::chrono::seconds(o_.request_timeout_s);
    BatchEngine* eng = eng_.get();
    // When the response ends without having been sent whole (the client left): free the sequences.
    auto release = [job, eng](bool success) {
      if (!success) {
        job->ch->abandoned = true;
        job->seqs->cancel_all(*eng);
      }
    };

    if (!r.stream) {
      // One JSON object. For up to kHoldStatus it is generated before the status line is written (so a
      // grammar error there is a 500), the connection polled every kHeartbeat. A longer generation is
      // sent chunked: the server writes a space (JSON allows leading whitespace) every kHeartbeat, so
      // clients with a read timeout keep waiting and a client that has gone away fails a write; either
      // way its sequences are freed then, not when max_tokens or the timeout would end them. An error
      // after the status line was sent is the body {"error": {...}} (never a completion object).
      auto whole = [this](const Job& j) {
        if (!j.error.empty()) return error_body(j.error, "server_error", nullptr, "grammar_error");
        if (j.endpoint != Endpoint::kResponses) return answer(j);
        ResponseBuilder rb(*j.rr, j.id, j.created, j.model);
        rb.set_output(j.choices[0].reader.finish());
        rb.set_finish(j.choices[0].finish, response_usage(j));
        return rb.response(j.choices[0].finish == "length" ? "incomplete" : "completed");
      };
      const int fd = connection_fd(req);
      if (!run(
              *job, nullptr, [&] { return peer_open(fd, req); }, Clock::now() + kHoldStatus)) {
        release(false);
        return send_error(res, 499, "the client closed the connection", nullptr, "server_error");
      }
      if (!job->paused) {
        if (!job->error.empty())
          return send_error(res, 500, job->error, nullptr, "server_error", "grammar_error");
        res.set_content(dump(whole(*job)), "application/json");
        return;
      }
      res.set_chunked_content_provider(
          "application/json",
          [this, job, release, whole, &req](size_t, httplib::DataSink& sink) {
            const int fd = connection_fd(req);
            if (!run(*job, nullptr, [&] { return peer_open(fd, req) && sink.write(" ", 1); })) {
              release(false);
              return false;
            }
            const std::string s = dump(whole(*job));
            sink.write(s.data(), s.size());
            sink.done();
            return true;
          },
          release);
      return;
    }

    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, job, release, &req](size_t, httplib::DataSink& sink) {
          const int fd = connection_fd(req);
          const bool ok = job->endpoint == Endpoint::kResponses ? stream_response(*job, sink, fd, req)
                                                                : stream_chunks(*job, sink, fd, req);
          if (!ok) {  // the client went away: free its sequences now
            release(false);
            return false;
          }
          sink.done();
          return true;
        },
        release);
  }

  // Chat and completions chunks (data: {...} lines, then data: [DONE]).
  bool stream_chunks(Job& job, httplib::DataSink& sink, int fd, const httplib::Request& req) {
    const GenRequest& r = *job.r;
    const bool chat = job.endpoint == Endpoint::kChat;
    auto send = [&](const json& j) {
      const std::string s = "data: " + dump(j) + "\n\n";
      return sink.write(s.data(), s.size());
    };
    auto chunk = [&](int i, json delta_or_text, json logprobs, json finish) {
      json c{{"index", i}, {"logprobs", std::move(logprobs)}, {"finish_reason", std::move(finish)}};
      c[chat ? "delta" : "text"] = std::move(delta_or_text);
      return json{{"id", job.id},
                  {"object", chat ? "chat.completion.chunk" : "text_completion"},
                  {"created", job.created},
                  {"model", job.model},
                  {"choices", json::array({c})}};
    };
    // Without tools the role comes first; with tools it waits for the form of the reply (content ""
    // for text, null for calls), so that no text of a call leaks.
    const bool hold_role = chat && job.plan.calls_possible;
    std::vector<bool> role_sent(job.choices.size(), !hold_role);
    if (chat && !hold_role)
      for (int i = 0; i < r.n; ++i)
        if (!send(chunk(i, json{{"role", "assistant"}, {"content", ""}}, nullptr, nullptr))) return false;
    auto on_events = [&](int i, const std::vector<ReplyEvent>& evs, const json& lps,
                         const std::string& finish) {
      std::vector<json> deltas;
      for (const ReplyEvent& ev : evs) {
        if (!chat) {
          deltas.push_back(ev.text);
          continue;
        }
        json d;
        if (ev.kind == ReplyEvent::Kind::kText) {
          if (!deltas.empty() && deltas.back().contains("content") && !deltas.back()["content"].is_null() &&
              !deltas.back().contains("tool_calls")) {
            deltas.back()["content"] = deltas.back()["content"].get<std::string>() + ev.text;
            continue;
          }
          d = {{"content", ev.text}};
        } else if (ev.kind == ReplyEvent::Kind::kCallStart) {
          d = {{"tool_calls", json::array({{{"index", ev.index},
                                            {"id", ev.id},
                                            {"type", "function"},
                                            {"function", {{"name", ev.name}, {"arguments", ""}}}}})}};
        } else {
          d = {{"tool_calls", json::array({{{"index", ev.index}, {"function", {{"arguments", ev.text}}}}})}};
        }
        if (!role_sent[static_cast<size_t>(i)]) {
          d["role"] = "assistant";
          if (ev.kind != ReplyEvent::Kind::kText) d["content"] = nullptr;
          role_sent[static_cast<size_t>(i)] = true;
        }
        deltas.push_back(std::move(d));
      }
      if (deltas.empty() && !lps.empty()) deltas.push_back(chat ? json{{"content", ""}} : json(""));
      if (!finish.empty() && chat && !role_sent[static_cast<size_t>(i)]) {
        deltas.push_back(json{{"role", "assistant"}, {"content", ""}});
        role_sent[static_cast<size_t>(i)] = true;
      }
      for (size_t k = 0; k < deltas.size(); ++k) {
        json lp = nullptr;
        if (r.logprobs && k + 1 == deltas.size()) lp = chat ? json{{"content", lps}} : legacy_from(lps);
        if (!send(chunk(i, deltas[k], lp, nullptr))) return false;
      }
      if (!finish.empty() && !send(chunk(i, chat ? json::object() : json(""), nullptr, finish))) return false;
      return true;
    };
    if (!run(job, on_events, [&] { return peer_open(fd, req); })) return false;
    if (!job.error.empty()) {  // as OpenAI's stream errors: one data line with an error object, no [DONE]
      send(error_body(job.error, "server_error", nullptr, "grammar_error"));
      return true;
    }
    if (r.include_usage) {
      json u{{"id", job.id},
             {"object", chat ? "chat.completion.chunk" : "text_completion"},
             {"created", job.created},
             {"model", job.model},
             {"choices", json::array()},
             {"usage", usage(job)}};
      if (!send(u)) return true;
    }
    const std::string done = "data: [DONE]\n\n";
    sink.write(done.data(), done.size());
    return true;
  }

  // Responses API events (event: TYPE / data: {...}).
  bool stream_response(Job& job, httplib::DataSink& sink, int fd, const httplib::Request& req) {
    ResponseBuilder rb(*job.rr, job.id, job.created, job.model);
    auto send = [&](const std::vector<json>& evs) {
      for (const json& e : evs) {
        const std::string s = "event: " + e["type"].get<std::string>() + "\ndata: " + dump(e) + "\n\n";
        if (!sink.write(s.data(), s.size())) return false;
      }
      return true;
    };
    if (!send(rb.start())) return false;
    auto on_events = [&](int, const std::vector<ReplyEvent>& evs, const json&, const std::string&) {
      for (const ReplyEvent& ev : evs)
        if (!send(rb.on(ev))) return false;
      return true;
    };
    if (!run(job, on_events, [&] { return peer_open(fd, req); })) return false;
    if (!job.error.empty()) {
      send(rb.fail("grammar_error", job.error));
      return true;
    }
    send(rb.finish(job.choices[0].finish, response_usage(job)));
    return true;
  }

  ServerOptions o_;
  std::unique_ptr<Tokenizer> tok_;
  std::unique_ptr<BatchEngine> eng_;
  httplib::Server svr_;
  Metrics metrics_;
  std::string model_id_;
  int32_t tool_calls_id_ = -1;  // v3's [TOOL_CALLS] control token
  int32_t byte_space_id_ = -1;  // the byte-fallback token of " "
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
  eo.max_batch = o.step_tokens;
  eo.max_queue = o.max_queue;
  eo.repack = !o.no_repack;
  const auto cache_type = parse_kv_cache_type(o.cache_type);
  if (!cache_type) {
    std::fprintf(stderr, "mixtral: error: --cache-type: '%s' is not one of f32, f16, q8_0\n",
                 o.cache_type.c_str());
    return 2;
  }
  eo.cache_type = *cache_type;
  eo.kv_memory = o.kv_memory;
  eo.masker = std::make_shared<const grammar::TokenMasker>(grammar::vocabulary_of(**tok));
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
  const BatchEngineStats st = s.engine().stats();
  std::fprintf(stderr,
               "mixtral serve: listening on http://%s:%d (model %s, parallel %d, context %lld, KV cache %s: "
               "%lld blocks of %lld positions, %lld bytes)\n",
               o.host.c_str(), port, o.model.c_str(), o.parallel,
               static_cast<long long>(s.engine().ctx_size()), st.kv_cache_type,
               static_cast<long long>(st.kv_blocks_total), static_cast<long long>(st.block_size),
               static_cast<long long>(st.kv_bytes_total));
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
