#include "cli_util.h"

#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <utility>

namespace mixtral::cli {

int fail(const Error& e) {
  std::fprintf(stderr, "mixtral: error: %s\n", e.message.c_str());
  return e.exit_code();
}

std::string json_ids(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s.push_back(',');
    s.append(std::to_string(ids[i]));
  }
  s.push_back(']');
  return s;
}

std::string quote_text(const std::string& s) {
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < 80; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + (s.size() > 80 ? "...'" : "'");
}

Result<std::vector<int32_t>> parse_ids(const std::string& text, const char* flag) {
  std::vector<int32_t> ids;
  std::string item;
  std::stringstream ss(text);
  while (std::getline(ss, item, ',')) {
    const size_t b = item.find_first_not_of(" \t\n"), e = item.find_last_not_of(" \t\n");
    if (b == std::string::npos)
      return Error::usage(std::string(flag) + ": empty item in " + quote_text(text));
    item = item.substr(b, e - b + 1);
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (...) {
      used = 0;
    }
    if (used != item.size() || v < 0 || v > INT32_MAX)
      return Error::usage(std::string(flag) + ": " + quote_text(item) + " is not a token id");
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) return Error::usage(std::string(flag) + ": no token ids given");
  return ids;
}

void add_cache_type_option(CLI::App* app, KvCacheType* t) {
  app->add_option_function<std::string>(
         "--cache-type", [t](const std::string& s) { *t = *parse_kv_cache_type(s); },
         std::string("KV cache element type of K and V: f32, f16 or q8_0 (default: ") +
             kv_cache_type_name(*t) + ")")
      ->check(CLI::Validator(
          [](std::string& s) {
            return parse_kv_cache_type(s) ? std::string() : quote_text(s) + " is not one of f32, f16, q8_0";
          },
          "f32|f16|q8_0"));
}

namespace {

// "ID=BIAS": ID a token id, BIAS a number in [-100, 100].
std::optional<std::pair<int32_t, float>> parse_bias_item(const std::string& s) {
  const size_t eq = s.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == s.size()) return std::nullopt;
  size_t used_id = 0, used_bias = 0;
  long long id = -1;
  float bias = 0;
  try {
    id = std::stoll(s.substr(0, eq), &used_id);
    bias = std::stof(s.substr(eq + 1), &used_bias);
  } catch (...) {
    return std::nullopt;
  }
  if (used_id != eq || used_bias != s.size() - eq - 1 || id < 0 || id > INT32_MAX || !std::isfinite(bias) ||
      bias < -100.0f || bias > 100.0f)
    return std::nullopt;
  return std::make_pair(static_cast<int32_t>(id), bias);
}

}  // namespace

void add_sampling_options(CLI::App* app, GenerateOptions* go) {
  app->add_option("--temp", go->temperature, "temperature (0: greedy)")->capture_default_str();
  app->add_option("--top-k", go->top_k, "top-k (0: off)")->capture_default_str();
  app->add_option("--top-p", go->top_p, "top-p (1: off)")->capture_default_str();
  app->add_option("--seed", go->seed, "random seed")->capture_default_str();
  app->add_option("--min-p", go->min_p,
                  "keep tokens with p >= min-p * p of the best token, at the temperature (0: off)")
      ->check(CLI::Range(0.0f, 1.0f))
      ->capture_default_str();
  app->add_option(
         "--repeat-penalty", go->repetition_penalty,
         "divide positive (multiply negative) logits of tokens in the prompt or output by this (1: off)")
      ->check(CLI::Validator(
          [](std::string& v) {
            char* end = nullptr;
            const float x = std::strtof(v.c_str(), &end);
            return end != v.c_str() && *end == '\0' && x > 0 ? std::string()
                                                             : quote_text(v) + " must be positive";
          },
          "POSITIVE"))
      ->capture_default_str();
  app->add_option("--presence-penalty", go->presence_penalty,
                  "subtract this from the logit of every token already generated (0: off)")
      ->check(CLI::Range(-2.0f, 2.0f))
      ->capture_default_str();
  app->add_option("--frequency-penalty", go->frequency_penalty,
                  "subtract this times its count from the logit of every token generated (0: off)")
      ->check(CLI::Range(-2.0f, 2.0f))
      ->capture_default_str();
  app->add_option_function<std::vector<std::string>>(
         "--logit-bias",
         [go](const std::vector<std::string>& items) {
           go->logit_bias.clear();
           for (const std::string& it : items) go->logit_bias.push_back(*parse_bias_item(it));
         },
         "ID=BIAS: add BIAS (-100..100; -100 bans, 100 forces) to token ID's logit (repeatable)")
      ->check(CLI::Validator(
          [](std::string& s) {
            return parse_bias_item(s) ? std::string()
                                      : quote_text(s) + " is not ID=BIAS with BIAS in [-100, 100]";
          },
          "ID=BIAS"))
      ->allow_extra_args(false);
}

Status check_logit_bias(const GenerateOptions& go, int64_t vocab) {
  for (const auto& [id, bias] : go.logit_bias)
    if (id >= vocab)
      return Error::usage("--logit-bias: token " + std::to_string(id) + " is outside the vocabulary of " +
                          std::to_string(vocab));
  return {};
}

Result<Loaded> load_model(const EngineOptions& eo) {
  Loaded l;
  MX_ASSIGN_OR_RETURN(l.tok, Tokenizer::load(eo.model_path));
  MX_ASSIGN_OR_RETURN(l.engine, Engine::load(eo));
  if (l.tok->n_vocab() > l.engine->config().vocab_size)
    return Error::data(l.tok->source() + ": the tokenizer has " + std::to_string(l.tok->n_vocab()) +
                       " pieces but the model's vocabulary has " +
                       std::to_string(l.engine->config().vocab_size));
  return l;
}

Result<std::string> read_text_file(const std::string& path, const char* flag) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Error::io(std::string(flag) + ": " + path + ": cannot open file");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return Error::io(std::string(flag) + ": " + path + ": read error");
  return ss.str();
}

}  // namespace mixtral::cli
