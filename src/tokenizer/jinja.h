// A Jinja2 subset for chat templates (tokenizer.chat_template, tokenizer_config.json), rendered as
// transformers does (trim_blocks and lstrip_blocks on):
//   {{ expr }}, {% if/elif/else/endif %}, {% for x in xs [if cond] %}...{% else %}...{% endfor %} with
//   loop.index/index0/first/last/length/revindex/revindex0, {% set x = e %}, {% set ns.a = e %},
//   {# comments #}, "-" whitespace control;
//   literals, lists, dicts, names, .attr, [index], [a:b] slices, calls, `a if c else b`, or/and/not,
//   == != < > <= >= in, not in, is [not] <test>, + - * / // % ~, filters |trim |length |lower |upper
//   |capitalize |title |string |int |float |first |last |join |default |tojson |replace |list |reverse
//   |safe |abs |count |select |reject |selectattr |rejectattr (with a test name and its arguments), string
//   methods strip/lstrip/rstrip/startswith/endswith/lower/upper/split/replace, dict methods
//   items/keys/values/get, functions raise_exception, namespace, range.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/result.h"

namespace mixtral::tok::jinja {

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion order, like Python dicts

struct Value {
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict };
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0.0;
  std::string s;
  std::shared_ptr<List> list;  // shared: namespace() objects and lists behave as references
  std::shared_ptr<Dict> dict;

  static Value none() { return make(Kind::kNone); }
  static Value boolean(bool v) {
    Value x = make(Kind::kBool);
    x.b = v;
    return x;
  }
  static Value integer(int64_t v) {
    Value x = make(Kind::kInt);
    x.i = v;
    return x;
  }
  static Value number(double v) {
    Value x = make(Kind::kFloat);
    x.f = v;
    return x;
  }
  static Value string(std::string v) {
    Value x = make(Kind::kString);
    x.s = std::move(v);
    return x;
  }
  static Value new_list() {
    Value x = make(Kind::kList);
    x.list = std::make_shared<List>();
    return x;
  }
  static Value new_dict() {
    Value x = make(Kind::kDict);
    x.dict = std::make_shared<Dict>();
    return x;
  }
  const Value* get(std::string_view key) const;  // dict member or nullptr
  void set(const std::string& key, Value v);     // dict member

 private:
  static Value make(Kind k) {
    Value x;
    x.kind = k;
    return x;
  }
};

class Template {
 public:
  // Parses a template; errors name `name` and the line.
  static Result<Template> parse(std::string_view source, const std::string& name);
  // Renders with the variables of `context` (a dict). raise_exception() becomes an error carrying its text.
  Result<std::string> render(const Value& context) const;

  struct Node;
  Template();
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

 private:
  std::shared_ptr<const Node> root_;
  std::string name_;
};

}  // namespace mixtral::tok::jinja
