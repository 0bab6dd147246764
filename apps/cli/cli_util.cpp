#include "cli_util.h"

#include <climits>
#include <cstdio>
#include <fstream>
#include <sstream>

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
