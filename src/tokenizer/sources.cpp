// Readers of the tokenizer sources other than a SentencePiece ModelProto: GGUF tokenizer.ggml.* metadata,
// Hugging Face tokenizer.json and tokenizer_config.json.
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/gguf.h"
#include "io/quote.h"
#include "tokenizer/model_spec.h"

namespace mixtral::tok {
namespace {

using json = nlohmann::json;

Result<std::string> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Error::io(path + ": cannot open file");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return Error::io(path + ": read error");
  return ss.str();
}

Result<json> read_json(const std::string& path) {
  MX_ASSIGN_OR_RETURN(std::string text, read_file(path));
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    return Error::data(path + ": invalid JSON: " + e.what());
  }
}

// Types when a source gives none: the unknown/bos/eos ids and <0xXX> spellings are special, the rest normal.
void infer_types(ModelSpec& spec) {
  spec.types.assign(spec.pieces.size(), TokenType::kNormal);
  for (size_t i = 0; i < spec.pieces.size(); ++i)
    if (piece_to_byte(spec.pieces[i]) >= 0) spec.types[i] = TokenType::kByte;
  for (int32_t id : {spec.bos_id, spec.eos_id})
    if (id >= 0) spec.types[static_cast<size_t>(id)] = TokenType::kControl;
  if (spec.unk_id >= 0) spec.types[static_cast<size_t>(spec.unk_id)] = TokenType::kUnknown;
}

int32_t find_piece(const ModelSpec& spec, std::string_view piece) {
  for (size_t i = 0; i < spec.pieces.size(); ++i)
    if (spec.pieces[i] == piece) return static_cast<int32_t>(i);
  return -1;
}

// A special-token id key: present -> must be in range; absent -> the conventional spelling, if any.
Status gguf_token_id(const GgufFile& g, const std::string& key, const ModelSpec& spec,
                     std::string_view spelling, int32_t& out) {
  MX_ASSIGN_OR_RETURN(auto v, g.get_int(key));
  if (!v) {
    out = find_piece(spec, spelling);
    return {};
  }
  if (*v < 0 || *v >= static_cast<int64_t>(spec.pieces.size()))
    return Error::data(g.path() + ": " + key + " = " + std::to_string(*v) + " is out of range for the " +
                       std::to_string(spec.pieces.size()) + " pieces of tokenizer.ggml.tokens");
  out = static_cast<int32_t>(*v);
  return {};
}

// "<s>" or {"content": "<s>", ...} (tokenizer_config.json's special-token entries).
std::string token_content(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string())
    return j["content"].get<std::string>();
  return "";
}

}  // namespace

Result<ModelSpec> read_gguf_spec(const std::string& path) {
  MX_ASSIGN_OR_RETURN(GgufFile g, GgufFile::open(path));
  ModelSpec spec;
  spec.source = path;
  MX_ASSIGN_OR_RETURN(auto model, g.get_string("tokenizer.ggml.model"));
  if (!model) return Error::data(path + ": the file has no tokenizer (tokenizer.ggml.model is missing)");
  if (*model != "llama")
    return Error::data(path + ": tokenizer.ggml.model is " + quote_name(*model) +
                       "; only SentencePiece vocabularies ('llama') are supported");
  MX_ASSIGN_OR_RETURN(auto tokens, g.get_string_array("tokenizer.ggml.tokens"));
  if (!tokens) return Error::data(path + ": tokenizer.ggml.tokens is missing");
  spec.pieces = std::move(*tokens);
  MX_ASSIGN_OR_RETURN(auto scores, g.get_float_array("tokenizer.ggml.scores"));
  if (!scores)
    return Error::data(path + ": tokenizer.ggml.scores is missing (SentencePiece BPE needs the scores)");
  spec.scores.reserve(scores->size());
  for (size_t i = 0; i < scores->size(); ++i) {
    const double s = (*scores)[i];
    if (std::isnan(s)) return Error::data(path + ": tokenizer.ggml.scores[" + std::to_string(i) + "] is NaN");
    spec.scores.push_back(static_cast<float>(s));
  }
  MX_TRY_STATUS(gguf_token_id(g, "tokenizer.ggml.unknown_token_id", spec, "<unk>", spec.unk_id));
  MX_TRY_STATUS(gguf_token_id(g, "tokenizer.ggml.bos_token_id", spec, "<s>", spec.bos_id));
  MX_TRY_STATUS(gguf_token_id(g, "tokenizer.ggml.eos_token_id", spec, "</s>", spec.eos_id));
  MX_ASSIGN_OR_RETURN(auto types, g.get_int_array("tokenizer.ggml.token_type"));
  if (types) {
    spec.types.reserve(types->size());
    for (size_t i = 0; i < types->size(); ++i) {
      const int64_t t = (*types)[i];
      if (t < 0 || t > 6)
        return Error::data(path + ": tokenizer.ggml.token_type[" + std::to_string(i) +
                           "] = " + std::to_string(t) + " is not a token type (1 normal .. 6 byte)");
      spec.types.push_back(t == 0 ? TokenType::kNormal
                                  : static_cast<TokenType>(t));  // 0: llama.cpp "undefined"
    }
  } else if (spec.scores.size() == spec.pieces.size()) {
    infer_types(spec);
  }
  MX_ASSIGN_OR_RETURN(auto add_bos, g.get_bool("tokenizer.ggml.add_bos_token"));
  MX_ASSIGN_OR_RETURN(auto add_eos, g.get_bool("tokenizer.ggml.add_eos_token"));
  MX_ASSIGN_OR_RETURN(auto add_space, g.get_bool("tokenizer.ggml.add_space_prefix"));
  MX_ASSIGN_OR_RETURN(auto remove_ws, g.get_bool("tokenizer.ggml.remove_extra_whitespaces"));
  MX_ASSIGN_OR_RETURN(auto tmpl, g.get_string("tokenizer.chat_template"));
  spec.add_bos = add_bos.value_or(true);
  spec.add_eos = add_eos.value_or(false);
  spec.add_dummy_prefix = add_space.value_or(true);
  spec.remove_extra_whitespaces = remove_ws.value_or(false);
  if (tmpl) spec.chat_template = *tmpl;
  spec.model_type = ModelType::kBpe;
  MX_TRY_STATUS(
      validate_spec(spec, "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"));
  if (spec.bos_id >= 0 && spec.types[static_cast<size_t>(spec.bos_id)] == TokenType::kByte)
    return Error::data(path + ": tokenizer.ggml.bos_token_id points at a byte piece");
  return spec;
}

Status read_tokenizer_config(const std::string& path, ModelSpec& spec) {
  std::ifstream probe(path);
  if (!probe) return {};
  MX_ASSIGN_OR_RETURN(json cfg, read_json(path));
  if (!cfg.is_object()) return Error::data(path + ": expected a JSON object");
  if (cfg.contains("add_bos_token")) {
    if (!cfg["add_bos_token"].is_boolean())
      return Error::data(path + ": add_bos_token must be true or false");
    spec.add_bos = cfg["add_bos_token"].get<bool>();
  }
  if (cfg.contains("add_eos_token")) {
    if (!cfg["add_eos_token"].is_boolean())
      return Error::data(path + ": add_eos_token must be true or false");
    spec.add_eos = cfg["add_eos_token"].get<bool>();
  }
  if (cfg.contains("chat_template")) {
    const json& t = cfg["chat_template"];
    if (t.is_string()) {
      spec.chat_template = t.get<std::string>();
    } else if (t.is_array()) {  // [{"name": "default", "template": "..."}, ...]
      for (const json& e : t)
        if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
            e["template"].is_string())
          spec.chat_template = e["template"].get<std::string>();
    } else if (!t.is_null()) {
      return Error::data(path + ": chat_template must be a string");
    }
  }
  for (const auto& [key, id] :
       {std::pair<const char*, int32_t*>{"bos_token", &spec.bos_id}, {"eos_token", &spec.eos_id}}) {
    if (!cfg.contains(key)) continue;
    const std::string content = token_content(cfg[key]);
    if (content.empty()) continue;
    const int32_t found = find_piece(spec, content);
    if (found < 0)
      return Error::data(path + ": " + key + " " + quote_name(content) + " is not in the vocabulary");
    *id = found;
  }
  return {};
}

Result<ModelSpec> read_tokenizer_json(const std::string& path) {
  MX_ASSIGN_OR_RETURN(json tj, read_json(path));
  ModelSpec spec;
  spec.source = path;
  if (!tj.is_object() || !tj.contains("model") || !tj["model"].is_object())
    return Error::data(path + ": tokenizer.json has no \"model\" object");
  const json& model = tj["model"];
  const std::string type = model.value("type", model.contains("merges") ? "BPE" : "");
  if (type != "BPE")
    return Error::data(path + ": model.type " + quote_name(type) + " is not supported (only BPE)");
  if (!model.contains("vocab") || !model["vocab"].is_object())
    return Error::data(path + ": model.vocab must be an object of piece -> id");
  std::map<int64_t, std::string> by_id;
  std::map<int64_t, TokenType> added_types;
  for (const auto& [piece, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (1 << 30))
      return Error::data(path + ": model.vocab[" + quote_name(piece) + "] is not a valid id");
    by_id[id.get<int64_t>()] = piece;
  }
  const std::string unk = model.contains("unk_token") && model["unk_token"].is_string()
                              ? model["unk_token"].get<std::string>()
                              : std::string();
  if (tj.contains("added_tokens") && tj["added_tokens"].is_array()) {
    for (const json& a : tj["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
          !a["content"].is_string() || a["id"].get<int64_t>() < 0 || a["id"].get<int64_t>() >= (1 << 30))
        return Error::data(path + ": added_tokens has an entry without a valid id and content");
      const int64_t id = a["id"].get<int64_t>();
      const std::string content = a["content"].get<std::string>();
      by_id[id] = content;
      added_types[id] = content == unk              ? TokenType::kUnknown
                        : a.value("special", false) ? TokenType::kControl
                                                    : TokenType::kUserDefined;
    }
  }
  if (by_id.empty()) return Error::data(path + ": model.vocab is empty");
  const int64_t n = by_id.rbegin()->first + 1;
  spec.pieces.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    auto it = by_id.find(i);
    if (it == by_id.end())
      return Error::data(path + ": model.vocab has no piece with id " + std::to_string(i));
    spec.pieces[static_cast<size_t>(i)] = it->second;
  }
  spec.unk_id = unk.empty() ? -1 : find_piece(spec, unk);
  spec.bos_id = find_piece(spec, "<s>");
  spec.eos_id = find_piece(spec, "</s>");
  infer_types(spec);
  for (const auto& [id, t] : added_types) spec.types[static_cast<size_t>(id)] = t;

  // Scores from merge ranks: a piece's priority is that of the first merge producing it. Pieces no merge
  // produces can never be formed by a Hugging Face BPE; they get the lowest priority.
  std::map<std::string, size_t> piece_id;
  for (size_t i = 0; i < spec.pieces.size(); ++i) piece_id.emplace(spec.pieces[i], i);
  spec.scores.assign(spec.pieces.size(), std::nanf(""));
  if (model.contains("merges")) {
    if (!model["merges"].is_array()) return Error::data(path + ": model.merges must be an array");
    const json& merges = model["merges"];
    for (size_t r = 0; r < merges.size(); ++r) {
      const json& m = merges[r];
      std::string merged;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos)
          return Error::data(path + ": model.merges[" + std::to_string(r) + "] is not \"a b\"");
        merged = s.substr(0, sp) + s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        merged = m[0].get<std::string>() + m[1].get<std::string>();
      } else {
        return Error::data(path + ": model.merges[" + std::to_string(r) + "] is not a pair of pieces");
      }
      auto it = piece_id.find(merged);
      if (it != piece_id.end() && std::isnan(spec.scores[it->second]))
        spec.scores[it->second] = -static_cast<float>(r);
    }
  }
  for (float& s : spec.scores)
    if (std::isnan(s)) s = -std::numeric_limits<float>::max();
  for (size_t i = 0; i < spec.pieces.size(); ++i)
    if (spec.types[i] != TokenType::kNormal) spec.scores[i] = 0.0f;

  // Normalization: SentencePiece-style (Prepend "▁" + Replace " " -> "▁", or a Metaspace pre-tokenizer).
  spec.add_dummy_prefix = false;
  const json norm = tj.value("normalizer", json());
  auto check_normalizer = [&](const json& nj) -> Status {
    const std::string t = nj.value("type", "");
    if (t == "Prepend") {
      spec.add_dummy_prefix = nj.value("prepend", "") == "\xE2\x96\x81";
    } else if (t != "Replace" && t != "Strip" && !t.empty()) {
      return Error::data(path + ": normalizer type " + quote_name(t) + " is not supported");
    }
    return {};
  };
  if (norm.is_object()) {
    if (norm.value("type", "") == "Sequence" && norm.contains("normalizers") &&
        norm["normalizers"].is_array()) {
      for (const json& nj : norm["normalizers"]) MX_TRY_STATUS(check_normalizer(nj));
    } else {
      MX_TRY_STATUS(check_normalizer(norm));
    }
  }
  const json pre = tj.value("pre_tokenizer", json());
  if (pre.is_object() && pre.value("type", "") == "Metaspace")
    spec.add_dummy_prefix =
        pre.value("prepend_scheme", pre.value("add_prefix_space", true) ? "always" : "never") != "never";
  spec.model_type = ModelType::kBpe;
  MX_TRY_STATUS(validate_spec(spec, "model.vocab", "model.merges", "added_tokens"));
  return spec;
}

}  // namespace mixtral::tok
