// `mixtral tokenize | detokenize | chat` and text prompts for `mixtral run`.
#include "tokenizer_cmds.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_util.h"
#include "mixtral/tokenizer.h"

namespace mixtral::cli {
namespace {

using json = nlohmann::json;

// {"messages": [{"role": ..., "content": ...}, ...]}; content may also be OpenAI's [{"type": "text", "text":
// ...}].
Result<std::vector<ChatMessage>> read_chat_file(const std::string& path) {
  MX_ASSIGN_OR_RETURN(std::string text, read_text_file(path, "--chat"));
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    return Error::data(path + ": invalid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("messages") || !j["messages"].is_array())
    return Error::data(path + ": expected {\"messages\": [...]}");
  std::vector<ChatMessage> msgs;
  for (size_t i = 0; i < j["messages"].size(); ++i) {
    const json& m = j["messages"][i];
    const std::string at = path + ": messages[" + std::to_string(i) + "]";
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      return Error::data(at + ".role must be a string");
    ChatMessage msg{m["role"].get<std::string>(), ""};
    const json c = m.value("content", json());
    if (c.is_string()) {
      msg.content = c.get<std::string>();
    } else if (c.is_array()) {
      for (const json& part : c) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
            !part["text"].is_string())
          return Error::data(at +
                             ".content: only text parts ({\"type\": \"text\", \"text\": ...}) are supported");
        msg.content += part["text"].get<std::string>();
      }
    } else {
      return Error::data(at + ".content must be a string");
    }
    msgs.push_back(std::move(msg));
  }
  return msgs;
}

Result<ChatFormat> chat_format(const Tokenizer& tok, const std::string& name) {
  if (name == "auto") return tok.default_chat_format();
  return parse_chat_format(name, "--chat-template");
}

// The tokenizer of a model (GGUF file, HF or consolidated directory) or a tokenizer file.
struct TokenizerArgs {
  std::string model, tokenizer;
  void add(CLI::App* app) {
    auto* m =
        app->add_option("-m,--model", model, "GGUF file, Hugging Face directory or consolidated directory");
    auto* t = app->add_option("--tokenizer", tokenizer, "tokenizer.model[.v3], tokenizer.json or .gguf file");
    m->excludes(t);
  }
  Result<std::unique_ptr<Tokenizer>> load() const {
    if (model.empty() && tokenizer.empty()) return Error::usage("give --model or --tokenizer");
    return Tokenizer::load(model.empty() ? tokenizer : model);
  }
};

struct TokenizeArgs {
  TokenizerArgs src;
  std::string text, text_file, jsonl, chat, chat_template = "auto";
  bool text_given = false, no_bos = false, special = false;
};

int cmd_tokenize(const TokenizeArgs& a) {
  const int n_inputs = (a.text_given ? 1 : 0) + !a.text_file.empty() + !a.jsonl.empty() + !a.chat.empty();
  if (n_inputs != 1)
    return fail(Error::usage("tokenize: give exactly one of --text, --text-file, --jsonl, --chat"));
  if (a.chat_template != "auto") {
    auto f = parse_chat_format(a.chat_template, "--chat-template");
    if (!f.ok()) return fail(f.error());
  }
  auto tok = a.src.load();
  if (!tok.ok()) return fail(tok.error());
  const Tokenizer& t = **tok;
  auto encode = [&](std::string_view s) -> Result<std::vector<int32_t>> {
    MX_ASSIGN_OR_RETURN(auto ids, t.encode(s, t.add_bos() && !a.no_bos, a.special));
    if (t.add_eos() && t.eos_id() >= 0) ids.push_back(t.eos_id());
    return ids;
  };
  if (!a.chat.empty()) {
    auto msgs = read_chat_file(a.chat);
    if (!msgs.ok()) return fail(msgs.error());
    auto fmt = chat_format(t, a.chat_template);
    if (!fmt.ok()) return fail(fmt.error());
    auto ids = t.apply_chat(*msgs, *fmt);
    if (!ids.ok()) return fail(Error::data(a.chat + ": " + ids.error().message));
    if (a.no_bos && !ids->empty() && ids->front() == t.bos_id()) ids->erase(ids->begin());
    std::printf("%s\n", json_ids(*ids).c_str());
    return 0;
  }
  if (!a.jsonl.empty()) {
    std::ifstream f(a.jsonl, std::ios::binary);
    if (!f) return fail(Error::io("--jsonl: " + a.jsonl + ": cannot open file"));
    std::string line, out;
    for (size_t n = 1; std::getline(f, line); ++n) {
      json j;
      try {
        j = json::parse(line);
      } catch (const json::exception& e) {
        return fail(Error::data(a.jsonl + ":" + std::to_string(n) + ": not a JSON string: " + e.what()));
      }
      if (!j.is_string()) return fail(Error::data(a.jsonl + ":" + std::to_string(n) + ": not a JSON string"));
      auto ids = encode(j.get_ref<const std::string&>());
      if (!ids.ok()) return fail(ids.error());
      out += json_ids(*ids);
      out += '\n';
    }
    std::fputs(out.c_str(), stdout);
    return 0;
  }
  std::string input = a.text;
  if (!a.text_file.empty()) {
    auto data = read_text_file(a.text_file, "--text-file");
    if (!data.ok()) return fail(data.error());
    input = std::move(*data);
  }
  auto ids = encode(input);
  if (!ids.ok()) return fail(ids.error());
  std::printf("%s\n", json_ids(*ids).c_str());
  return 0;
}

int cmd_detokenize(const TokenizerArgs& src, const std::string& ids_text) {
  auto ids = parse_ids(ids_text, "--ids");
  if (!ids.ok()) return fail(ids.error());
  auto tok = src.load();
  if (!tok.ok()) return fail(tok.error());
  auto text = (*tok)->decode(*ids);
  if (!text.ok()) return fail(Error::usage("--ids: " + text.error().message));
  std::fwrite(text->data(), 1, text->size(), stdout);
  std::fputc('\n', stdout);
  return 0;
}

struct ChatArgs {
  std::string model, system, chat_template = "auto";
  int threads = 0;
  int64_t ctx_size = 0;
  KvCacheType cache_type = KvCacheType::kF16;
  bool verbose = false;
  GenerateOptions go;
};

int cmd_chat(ChatArgs a) {
  if (a.chat_template != "auto") {
    auto f = parse_chat_format(a.chat_template, "--chat-template");
    if (!f.ok()) return fail(f.error());
  }
  EngineOptions eo;
  eo.model_path = a.model;
  eo.threads = a.threads;
  eo.ctx_size = a.ctx_size;
  eo.cache_type = a.cache_type;
  // One engine for the whole conversation: its KV cache keeps the last turn, so each turn prefills only the
  // tokens after the prefix it shares with the previous one.
  auto loaded = load_model(eo);
  if (!loaded.ok()) return fail(loaded.error());
  Engine& engine = *loaded->engine;
  const Tokenizer& tok = *loaded->tok;
  if (Status st = check_logit_bias(a.go, engine.config().vocab_size); !st.ok()) return fail(st.error());
  auto fmt = chat_format(tok, a.chat_template);
  if (!fmt.ok()) return fail(fmt.error());
  a.go.stop_at_eos = true;
  const bool tty = isatty(fileno(stdin));
  if (tty)
    std::fprintf(stderr, "mixtral chat (%s): type a message; /reset starts over, /exit or Ctrl-D quits\n",
                 chat_format_name(*fmt));
  std::vector<ChatMessage> history;
  if (!a.system.empty()) history.push_back({"system", a.system});
  const size_t n_fixed = history.size();
  std::vector<int32_t> said;  // the last prompt and the answer's tokens (no EOS): what the cache holds
  std::string line;
  int64_t turn = 0;
  while (true) {
    if (tty) {
      std::fputs("\n> ", stdout);
      std::fflush(stdout);
    }
    if (!std::getline(std::cin, line)) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      history.resize(n_fixed);
      said.clear();
      continue;
    }
    if (line.empty()) continue;
    history.push_back({"user", line});
    auto fits = [&](const std::vector<int32_t>& p) {
      return static_cast<int64_t>(p.size()) + a.go.max_tokens <= engine.ctx_size();
    };
    Result<std::vector<int32_t>> prompt = tok.apply_chat(history, *fmt);
    // The conversation as the model saw it (its answers' own tokens, which re-encoding the answer's text may
    // spell differently) plus the new message's ids, wherever the template's ids for the history extend its
    // ids for the history before the new message (mistral-v1, v3 without a system prompt): the engine's
    // cache then covers everything but the new message.
    if (prompt.ok() && !said.empty()) {
      const std::vector<ChatMessage> before(history.begin(), history.end() - 1);
      auto closed = tok.apply_chat(before, *fmt);
      if (closed.ok() && closed->size() <= prompt->size() &&
          std::equal(closed->begin(), closed->end(), prompt->begin())) {
        std::vector<int32_t> p = said;
        p.insert(p.end(), prompt->begin() + static_cast<std::ptrdiff_t>(closed->size()), prompt->end());
        if (fits(p)) prompt = std::move(p);
      }
    }
    // Otherwise the template's ids; drop the oldest exchanges while they do not leave room for the answer.
    while (prompt.ok() && !fits(*prompt) && history.size() >= n_fixed + 3) {
      history.erase(history.begin() + static_cast<std::ptrdiff_t>(n_fixed),
                    history.begin() + static_cast<std::ptrdiff_t>(n_fixed) + 2);
      prompt = tok.apply_chat(history, *fmt);
    }
    if (!prompt.ok()) return fail(prompt.error());
    if (!fits(*prompt)) {
      std::fprintf(
          stderr,
          "mixtral: error: this message (%zu prompt tokens + -n %lld) does not fit the context of %lld "
          "tokens (--ctx-size)\n",
          prompt->size(), static_cast<long long>(a.go.max_tokens), static_cast<long long>(engine.ctx_size()));
      history.pop_back();
      if (!tty) return 2;
      continue;
    }
    StreamingDecoder dec(tok, true);
    std::string answer;
    Status bad;
    using Clock = std::chrono::steady_clock;
    const Clock::time_point start = Clock::now();
    Clock::time_point first;  // when the first token came (the time to first token)
    int64_t n_out = 0;
    auto out = engine.generate(*prompt, a.go, [&](int32_t id) {
      if (n_out++ == 0) first = Clock::now();
      if (id == tok.eos_id() || !bad.ok()) return;
      auto piece = dec.push(id);
      if (!piece.ok()) {
        bad = piece.error();
        return;
      }
      answer += *piece;
      std::fputs(piece->c_str(), stdout);
      std::fflush(stdout);
    });
    if (!out.ok()) return fail(out.error());
    if (!bad.ok()) return fail(bad.error());
    ++turn;
    if (a.verbose) {
      const Clock::time_point end = Clock::now();
      const double ttft_ms = n_out ? std::chrono::duration<double, std::milli>(first - start).count() : 0.0;
      const double decode_s = n_out > 1 ? std::chrono::duration<double>(end - first).count() : 0.0;
      const int64_t reused = engine.reused_tokens();
      std::fprintf(
          stderr,
          "[turn %lld: prompt %zu tokens: %lld reused from the cache, %lld computed; first token after "
          "%.1f ms; %lld tokens, %.2f tokens/s after the first]\n",
          static_cast<long long>(turn), prompt->size(), static_cast<long long>(reused),
          static_cast<long long>(static_cast<int64_t>(prompt->size()) - reused), ttft_ms,
          static_cast<long long>(n_out), decode_s > 0 ? static_cast<double>(n_out - 1) / decode_s : 0.0);
    }
    const std::string tail = dec.finish();
    answer += tail;
    std::fputs(tail.c_str(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    if (answer.empty()) {  // an immediate EOS: keep the history a valid alternation
      history.pop_back();
      continue;
    }
    a.go.seed += 1;  // a fresh sample stream per answer
    history.push_back({"assistant", answer});
    said = std::move(*prompt);
    said.insert(said.end(), out->begin(), out->end());
    if (!said.empty() && said.back() == tok.eos_id()) said.pop_back();
  }
  return 0;
}

}  // namespace

int run_text_prompt(const EngineOptions& eo, const std::string& prompt, const GenerateOptions& go,
                    bool ids_only) {
  auto loaded = load_model(eo);
  if (!loaded.ok()) return fail(loaded.error());
  if (Status st = check_logit_bias(go, loaded->engine->config().vocab_size); !st.ok())
    return fail(st.error());
  const Tokenizer& tok = *loaded->tok;
  auto ids = tok.encode(prompt, tok.add_bos(), false);
  if (!ids.ok()) return fail(ids.error());
  StreamingDecoder dec(tok, false);  // the continuation of the prompt: leading spaces are kept
  Status bad;
  auto out = loaded->engine->generate(*ids, go, [&](int32_t id) {
    if (ids_only || !bad.ok()) return;
    auto piece = dec.push(id);
    if (!piece.ok()) {
      bad = piece.error();
      return;
    }
    std::fputs(piece->c_str(), stdout);
    std::fflush(stdout);
  });
  if (!out.ok()) return fail(out.error());
  if (!bad.ok()) return fail(bad.error());
  if (ids_only) {
    std::printf("%s\n", json_ids(*out).c_str());
  } else {
    std::printf("%s\n", dec.finish().c_str());
  }
  return 0;
}

std::function<std::optional<int>()> add_tokenizer_commands(CLI::App& app) {
  auto ta = std::make_shared<TokenizeArgs>();
  auto* tk = app.add_subcommand("tokenize", "text -> token ids (JSON array)");
  ta->src.add(tk);
  tk->add_option("--text", ta->text, "text to encode");
  tk->add_option("--text-file", ta->text_file,
                 "file whose bytes are the text (invalid UTF-8: U+FFFD per byte)");
  tk->add_option("--jsonl", ta->jsonl, "one JSON string per line -> one JSON array per line");
  tk->add_option("--chat", ta->chat, "{\"messages\": [...]} -> ids of the prompt ready for the answer");
  tk->add_flag("--no-bos", ta->no_bos, "do not add the BOS token");
  tk->add_flag("--special", ta->special, "parse control tokens written in the text (<s>, [INST], ...)");
  tk->add_option("--chat-template", ta->chat_template, "auto, mistral-v1, mistral-v3 or jinja")
      ->capture_default_str();

  auto da = std::make_shared<TokenizerArgs>();
  auto ids = std::make_shared<std::string>();
  auto* dt = app.add_subcommand("detokenize", "token ids -> text");
  da->add(dt);
  dt->add_option("--ids", *ids, "token ids: 1,2,3")->required();

  auto ca = std::make_shared<ChatArgs>();
  ca->go.max_tokens = 512;
  ca->go.temperature = 0.7f;
  auto* ch = app.add_subcommand("chat",
                                "interactive chat in the terminal (streams answers, keeps the conversation)");
  ch->add_option("-m,--model", ca->model, "GGUF file, Hugging Face directory or consolidated directory")
      ->required();
  ch->add_option("-t,--threads", ca->threads, "worker threads (default: all cores)");
  ch->add_option("-c,--ctx-size", ca->ctx_size, "context size in tokens (default: min(trained, 4096))");
  add_cache_type_option(ch, &ca->cache_type);
  ch->add_option("-n,--n-predict", ca->go.max_tokens, "most tokens per answer")->capture_default_str();
  add_sampling_options(ch, &ca->go);
  ch->add_flag(
      "--verbose", ca->verbose,
      "after each answer, on stderr: prompt tokens reused from the cache and computed, time to first "
      "token, decode rate");
  ch->add_option("--system", ca->system, "system prompt");
  ch->add_option("--chat-template", ca->chat_template, "auto, mistral-v1, mistral-v3 or jinja")
      ->capture_default_str();

  return [=]() -> std::optional<int> {
    if (tk->parsed()) {
      ta->text_given = tk->count("--text") > 0;
      return cmd_tokenize(*ta);
    }
    if (dt->parsed()) return cmd_detokenize(*da, *ids);
    if (ch->parsed()) return cmd_chat(*ca);
    return std::nullopt;
  };
}

}  // namespace mixtral::cli
