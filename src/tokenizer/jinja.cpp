// Jinja2 subset: lexer (with trim_blocks / lstrip_blocks / "-" whitespace control), recursive-descent
// parser to a small AST, and a tree-walking evaluator. Errors inside are thrown as JinjaError and turned
// into Result at the two entry points.
#include "tokenizer/jinja.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>

#include "tokenizer/model_spec.h"

namespace mixtral::tok::jinja {

const Value* Value::get(std::string_view key) const {
  if (kind != Kind::kDict || !dict) return nullptr;
  for (const auto& [k, v] : *dict)
    if (k == key) return &v;
  return nullptr;
}

void Value::set(const std::string& key, Value v) {
  for (auto& [k, old] : *dict)
    if (k == key) {
      old = std::move(v);
      return;
    }
  dict->emplace_back(key, std::move(v));
}

namespace {

struct JinjaError {
  std::string msg;
  bool raised = false;  // from raise_exception(): the message is the template's own
};

[[noreturn]] void fail(int line, const std::string& msg) {
  throw JinjaError{"line " + std::to_string(line) + ": " + one_line(msg)};
}

// --- lexer ------------------------------------------------------------------------------------------

enum class T {
  kText,
  kExprOpen,
  kExprClose,
  kBlockOpen,
  kBlockClose,
  kName,
  kString,
  kInt,
  kFloat,
  kOp,
  kEnd
};

struct Tok {
  T type;
  std::string text;
  int line;
};

bool is_name_start(char c) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_';
}
bool is_name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
}

class Lexer {
 public:
  explicit Lexer(std::string_view src) : s_(src) {}

  std::vector<Tok> run() {
    size_t pos = 0;
    bool strip_next = false;  // the previous tag ended with "-"
    bool trim_next = false;   // the previous tag was a block/comment (trim_blocks)
    while (pos <= s_.size()) {
      const size_t open = find_open(pos);
      const size_t text_end = open == std::string_view::npos ? s_.size() : open;
      std::string text(s_.substr(pos, text_end - pos));
      char kind = 0, marker = 0;
      if (open != std::string_view::npos) {
        kind = s_[open + 1];
        marker = open + 2 < s_.size() ? s_[open + 2] : 0;
      }
      // lstrip_blocks: spaces/tabs between a line start and a block or comment tag go.
      if ((kind == '%' || kind == '#') && marker != '+' && marker != '-') {
        const size_t nl = text.find_last_of('\n');
        const size_t from = nl == std::string::npos ? 0 : nl + 1;
        const bool line_start = nl != std::string::npos || pos == 0;
        if (line_start && text.find_first_not_of(" \t", from) == std::string::npos) text.resize(from);
      }
      if (trim_next) {  // trim_blocks: the first newline after a block tag goes
        if (text.rfind("\r\n", 0) == 0) {
          text.erase(0, 2);
        } else if (!text.empty() && text[0] == '\n') {
          text.erase(0, 1);
        }
      }
      if (strip_next)
        text.erase(0, text.find_first_not_of(" \t\r\n") == std::string::npos
                          ? text.size()
                          : text.find_first_not_of(" \t\r\n"));
      if (marker == '-') {
        const size_t last = text.find_last_not_of(" \t\r\n");
        text.resize(last == std::string::npos ? 0 : last + 1);
      }
      if (!text.empty()) toks_.push_back({T::kText, std::move(text), line_at(pos)});
      if (open == std::string_view::npos) break;
      pos = open + 2 + ((marker == '-' || marker == '+') ? 1 : 0);
      if (kind == '#') {
        const size_t close = s_.find("#}", pos);
        if (close == std::string_view::npos) fail(line_at(open), "unterminated comment");
        strip_next = close > pos && s_[close - 1] == '-';
        trim_next = !strip_next;
        pos = close + 2;
        continue;
      }
      toks_.push_back({kind == '{' ? T::kExprOpen : T::kBlockOpen, "", line_at(open)});
      pos = lex_tag(pos, kind == '{' ? '}' : '%', strip_next);
      trim_next = kind == '%' && !strip_next;
    }
    toks_.push_back({T::kEnd, "", line_at(s_.size())});
    return std::move(toks_);
  }

 private:
  size_t find_open(size_t from) const {
    for (size_t p = s_.find('{', from); p != std::string_view::npos; p = s_.find('{', p + 1))
      if (p + 1 < s_.size() && (s_[p + 1] == '{' || s_[p + 1] == '%' || s_[p + 1] == '#')) return p;
    return std::string_view::npos;
  }
  int line_at(size_t pos) const {
    return 1 + static_cast<int>(std::count(s_.begin(), s_.begin() + pos, '\n'));
  }

  // Expression tokens up to the closing "}}" or "%}"; returns the position after it.
  size_t lex_tag(size_t pos, char close, bool& strip_next) {
    const int line = line_at(pos);
    while (true) {
      while (pos < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos]))) ++pos;
      if (pos >= s_.size()) fail(line, "unterminated tag");
      const char c = s_[pos];
      if (c == '-' && pos + 2 < s_.size() && s_[pos + 1] == close && s_[pos + 2] == '}') {
        strip_next = true;
        toks_.push_back({close == '}' ? T::kExprClose : T::kBlockClose, "", line});
        return pos + 3;
      }
      if (c == close && pos + 1 < s_.size() && s_[pos + 1] == '}') {
        strip_next = false;
        toks_.push_back({close == '}' ? T::kExprClose : T::kBlockClose, "", line});
        return pos + 2;
      }
      if (is_name_start(c)) {
        size_t e = pos;
        while (e < s_.size() && is_name_char(s_[e])) ++e;
        toks_.push_back({T::kName, std::string(s_.substr(pos, e - pos)), line});
        pos = e;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t e = pos;
        while (e < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[e])) || s_[e] == '_')) ++e;
        bool is_float = false;
        if (e + 1 < s_.size() && s_[e] == '.' && std::isdigit(static_cast<unsigned char>(s_[e + 1]))) {
          is_float = true;
          ++e;
          while (e < s_.size() && std::isdigit(static_cast<unsigned char>(s_[e]))) ++e;
        }
        std::string num(s_.substr(pos, e - pos));
        num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
        toks_.push_back({is_float ? T::kFloat : T::kInt, num, line});
        pos = e;
      } else if (c == '\'' || c == '"') {
        std::string out;
        size_t e = pos + 1;
        for (;; ++e) {
          if (e >= s_.size()) fail(line, "unterminated string");
          if (s_[e] == c) break;
          if (s_[e] == '\\' && e + 1 < s_.size()) {
            const char x = s_[++e];
            out += x == 'n' ? '\n' : x == 't' ? '\t' : x == 'r' ? '\r' : x;
          } else {
            out += s_[e];
          }
        }
        toks_.push_back({T::kString, std::move(out), line});
        pos = e + 1;
      } else {
        static const char* kOps[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<",
                                     ">",  "=",  "(",  ")",  "[",  "]",  "{", "}", ",", ".", ":", "|"};
        bool found = false;
        for (const char* op : kOps) {
          const size_t n = std::char_traits<char>::length(op);
          if (s_.substr(pos, n) == op) {
            toks_.push_back({T::kOp, op, line});
            pos += n;
            found = true;
            break;
          }
        }
        if (!found) fail(line, std::string("unexpected character '") + c + "'");
      }
    }
  }

  std::string_view s_;
  std::vector<Tok> toks_;
};

}  // namespace

// --- AST ----------------------------------------------------------------------------------------------

struct Expr {
  enum class K {
    kLiteral,
    kName,
    kList,
    kDict,
    kAttr,
    kIndex,
    kSlice,
    kCall,
    kFilter,
    kTest,
    kNot,
    kNeg,
    kBinary,
    kCond
  };
  K k;
  int line = 0;
  Value value;                              // kLiteral
  std::string name;                         // kName, kAttr, kFilter, kTest, kBinary (operator)
  std::vector<std::unique_ptr<Expr>> args;  // operands / arguments (nullptr: omitted slice part)
  std::vector<std::string> kwnames;         // kCall/kFilter: names of trailing keyword arguments
  bool negated = false;                     // kTest
};

struct Template::Node {
  enum class K { kSeq, kText, kOutput, kIf, kFor, kSet };
  K k = K::kSeq;
  int line = 0;
  std::string text;                          // kText
  std::vector<std::unique_ptr<Expr>> exprs;  // kOutput: [e]; kIf: conditions; kFor: [iter, cond?]; kSet: [e]
  std::vector<std::unique_ptr<Node>> children;  // kSeq: statements; kIf: bodies (+else); kFor: [body, else?]
  std::vector<std::string> names;               // kFor: loop variables; kSet: target (name or ns, attr)
  bool has_else = false;
};
using Node = Template::Node;

namespace {

class Parser {
 public:
  explicit Parser(std::vector<Tok> toks) : t_(std::move(toks)) {}

  std::unique_ptr<Node> parse_all() {
    auto root = parse_block({});
    if (peek().type != T::kEnd) fail(peek().line, "unexpected '{% " + peek_tag_name() + " %}'");
    return root;
  }

 private:
  const Tok& peek(size_t ahead = 0) const { return t_[std::min(i_ + ahead, t_.size() - 1)]; }
  const Tok& next() { return t_[std::min(i_++, t_.size() - 1)]; }
  bool is_op(const char* op, size_t ahead = 0) const {
    return peek(ahead).type == T::kOp && peek(ahead).text == op;
  }
  bool is_name(const char* n, size_t ahead = 0) const {
    return peek(ahead).type == T::kName && peek(ahead).text == n;
  }
  void expect_op(const char* op) {
    if (!is_op(op)) fail(peek().line, std::string("expected '") + op + "', found '" + peek().text + "'");
    ++i_;
  }
  void expect(T type, const char* what) {
    if (peek().type != type) fail(peek().line, std::string("expected ") + what);
    ++i_;
  }
  std::string expect_name() {
    if (peek().type != T::kName) fail(peek().line, "expected a name, found '" + peek().text + "'");
    return next().text;
  }
  std::string peek_tag_name() const { return peek(1).type == T::kName ? peek(1).text : "?"; }

  // Statements until a block tag whose name is in `stops` (left unconsumed, pointing at "{%").
  std::unique_ptr<Node> parse_block(const std::vector<std::string>& stops) {
    auto seq = std::make_unique<Node>();
    seq->k = Node::K::kSeq;
    while (true) {
      const Tok& tk = peek();
      if (tk.type == T::kEnd) {
        if (!stops.empty()) fail(tk.line, "missing {% " + stops.back() + " %}");
        return seq;
      }
      if (tk.type == T::kText) {
        auto n = std::make_unique<Node>();
        n->k = Node::K::kText;
        n->text = next().text;
        seq->children.push_back(std::move(n));
      } else if (tk.type == T::kExprOpen) {
        next();
        auto n = std::make_unique<Node>();
        n->k = Node::K::kOutput;
        n->line = tk.line;
        n->exprs.push_back(parse_expr());
        expect(T::kExprClose, "'}}'");
        seq->children.push_back(std::move(n));
      } else if (tk.type == T::kBlockOpen) {
        const std::string name = peek_tag_name();
        if (std::find(stops.begin(), stops.end(), name) != stops.end()) return seq;
        seq->children.push_back(parse_statement());
      } else {
        fail(tk.line, "unexpected '" + tk.text + "'");
      }
    }
  }

  // Bounds recursion on deeply nested input (the evaluator recurses as deep as the tree).
  struct Depth {
    explicit Depth(Parser& p) : p_(p) {
      if (++p_.depth_ > kMaxDepth)
        fail(p_.peek().line, "nesting deeper than " + std::to_string(kMaxDepth) + " levels");
    }
    ~Depth() { --p_.depth_; }
    Parser& p_;
  };
  static constexpr int kMaxDepth = 200;

  std::unique_ptr<Node> parse_statement() {
    Depth depth(*this);
    const int line = next().line;  // "{%"
    const std::string kw = expect_name();
    auto n = std::make_unique<Node>();
    n->line = line;
    if (kw == "if") {
      n->k = Node::K::kIf;
      n->exprs.push_back(parse_expr());
      expect(T::kBlockClose, "'%}'");
      n->children.push_back(parse_block({"elif", "else", "endif"}));
      while (true) {
        next();  // "{%"
        const std::string t = expect_name();
        if (t == "elif") {
          n->exprs.push_back(parse_expr());
          expect(T::kBlockClose, "'%}'");
          n->children.push_back(parse_block({"elif", "else", "endif"}));
        } else if (t == "else") {
          expect(T::kBlockClose, "'%}'");
          n->children.push_back(parse_block({"endif"}));
          n->has_else = true;
        } else {  // endif
          expect(T::kBlockClose, "'%}'");
          break;
        }
      }
    } else if (kw == "for") {
      n->k = Node::K::kFor;
      n->names.push_back(expect_name());
      while (is_op(",")) {
        next();
        n->names.push_back(expect_name());
      }
      if (!is_name("in")) fail(peek().line, "expected 'in' in for");
      next();
      n->exprs.push_back(parse_or_test());  // no inline "if/else" here: "if" filters the loop
      if (is_name("if")) {
        next();
        n->exprs.push_back(parse_expr());
      }
      expect(T::kBlockClose, "'%}'");
      n->children.push_back(parse_block({"else", "endfor"}));
      next();  // "{%"
      if (expect_name() == "else") {
        expect(T::kBlockClose, "'%}'");
        n->children.push_back(parse_block({"endfor"}));
        n->has_else = true;
        next();
        expect_name();
      }
      expect(T::kBlockClose, "'%}'");
    } else if (kw == "set") {
      n->k = Node::K::kSet;
      n->names.push_back(expect_name());
      if (is_op(".")) {
        next();
        n->names.push_back(expect_name());
      }
      expect_op("=");
      n->exprs.push_back(parse_expr());
      expect(T::kBlockClose, "'%}'");
    } else {
      fail(line, "unsupported tag '{% " + kw + " %}'");
    }
    return n;
  }

  std::unique_ptr<Expr> make(Expr::K k, int line) {
    auto e = std::make_unique<Expr>();
    e->k = k;
    e->line = line;
    return e;
  }
  std::unique_ptr<Expr> binary(const std::string& op, std::unique_ptr<Expr> a, std::unique_ptr<Expr> b) {
    auto e = make(Expr::K::kBinary, a->line);
    e->name = op;
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  std::unique_ptr<Expr> parse_expr() {
    Depth depth(*this);
    auto a = parse_or_test();
    if (is_name("if")) {  // a if cond else b
      const int line = next().line;
      auto c = make(Expr::K::kCond, line);
      auto cond = parse_or_test();
      std::unique_ptr<Expr> b;
      if (is_name("else")) {
        next();
        b = parse_expr();
      }
      c->args.push_back(std::move(a));
      c->args.push_back(std::move(cond));
      c->args.push_back(std::move(b));
      return c;
    }
    return a;
  }
  std::unique_ptr<Expr> parse_or_test() {
    auto a = parse_and();
    while (is_name("or")) {
      next();
      a = binary("or", std::move(a), parse_and());
    }
    return a;
  }
  std::unique_ptr<Expr> parse_and() {
    auto a = parse_not();
    while (is_name("and")) {
      next();
      a = binary("and", std::move(a), parse_not());
    }
    return a;
  }
  std::unique_ptr<Expr> parse_not() {
    if (is_name("not")) {
      auto e = make(Expr::K::kNot, next().line);
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }
  std::unique_ptr<Expr> parse_compare() {
    auto a = parse_math1();
    while (true) {
      static const char* kCmp[] = {"==", "!=", "<=", ">=", "<", ">"};
      bool matched = false;
      for (const char* op : kCmp)
        if (is_op(op)) {
          next();
          a = binary(op, std::move(a), parse_math1());
          matched = true;
          break;
        }
      if (matched) continue;
      if (is_name("in")) {
        next();
        a = binary("in", std::move(a), parse_math1());
      } else if (is_name("not") && is_name("in", 1)) {
        i_ += 2;
        a = binary("not in", std::move(a), parse_math1());
      } else {
        return a;
      }
    }
  }
  std::unique_ptr<Expr> parse_math1() {
    auto a = parse_concat();
    while (is_op("+") || is_op("-")) {
      const std::string op = next().text;
      a = binary(op, std::move(a), parse_concat());
    }
    return a;
  }
  std::unique_ptr<Expr> parse_concat() {
    auto a = parse_math2();
    while (is_op("~")) {
      next();
      a = binary("~", std::move(a), parse_math2());
    }
    return a;
  }
  std::unique_ptr<Expr> parse_math2() {
    auto a = parse_unary();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string op = next().text;
      a = binary(op, std::move(a), parse_unary());
    }
    return a;
  }
  std::unique_ptr<Expr> parse_unary() {
    Depth depth(*this);
    if (is_op("-")) {
      auto e = make(Expr::K::kNeg, next().line);
      e->args.push_back(parse_unary());
      return e;
    }
    if (is_op("+")) next();
    return parse_postfix(parse_primary());
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (peek().type == T::kName && is_op("=", 1)) {
        e.kwnames.push_back(next().text);
        next();
      } else if (!e.kwnames.empty()) {
        fail(peek().line, "positional argument after keyword argument");
      }
      e.args.push_back(parse_expr());
      if (!is_op(",")) break;
      next();
    }
    expect_op(")");
  }

  std::unique_ptr<Expr> parse_postfix(std::unique_ptr<Expr> a) {
    while (true) {
      const int line = peek().line;
      if (is_op(".")) {
        next();
        auto e = make(Expr::K::kAttr, line);
        e->name = expect_name();
        e->args.push_back(std::move(a));
        a = std::move(e);
      } else if (is_op("[")) {
        next();
        std::unique_ptr<Expr> parts[3];
        int n_colons = 0;
        if (!is_op(":")) parts[0] = parse_expr();
        while (is_op(":") && n_colons < 2) {
          next();
          ++n_colons;
          if (!is_op(":") && !is_op("]")) parts[n_colons] = parse_expr();
        }
        expect_op("]");
        auto e = make(n_colons ? Expr::K::kSlice : Expr::K::kIndex, line);
        e->args.push_back(std::move(a));
        for (int k = 0; k < (n_colons ? 3 : 1); ++k) e->args.push_back(std::move(parts[k]));
        a = std::move(e);
      } else if (is_op("(")) {
        auto e = make(Expr::K::kCall, line);
        e->args.push_back(std::move(a));
        parse_call_args(*e);
        a = std::move(e);
      } else if (is_op("|")) {
        next();
        auto e = make(Expr::K::kFilter, line);
        e->name = expect_name();
        e->args.push_back(std::move(a));
        if (is_op("(")) parse_call_args(*e);
        a = std::move(e);
      } else if (is_name("is")) {
        next();
        auto e = make(Expr::K::kTest, line);
        if (is_name("not")) {
          next();
          e->negated = true;
        }
        e->name = expect_name();
        e->args.push_back(std::move(a));
        if (is_op("(")) {
          parse_call_args(*e);
        } else if (peek().type == T::kString || peek().type == T::kInt || peek().type == T::kFloat) {
          e->args.push_back(parse_primary());  // "is sameas x" style single argument
        }
        a = std::move(e);
      } else {
        return a;
      }
    }
  }

  std::unique_ptr<Expr> parse_primary() {
    const Tok& tk = peek();
    const int line = tk.line;
    if (tk.type == T::kString) {
      auto e = make(Expr::K::kLiteral, line);
      std::string s = next().text;
      while (peek().type == T::kString) s += next().text;  // adjacent literals concatenate
      e->value = Value::string(std::move(s));
      return e;
    }
    if (tk.type == T::kInt || tk.type == T::kFloat) {
      auto e = make(Expr::K::kLiteral, line);
      const std::string num = next().text;
      e->value = tk.type == T::kInt ? Value::integer(std::stoll(num)) : Value::number(std::stod(num));
      return e;
    }
    if (tk.type == T::kName) {
      const std::string n = next().text;
      auto e = make(Expr::K::kLiteral, line);
      if (n == "true" || n == "True") {
        e->value = Value::boolean(true);
      } else if (n == "false" || n == "False") {
        e->value = Value::boolean(false);
      } else if (n == "none" || n == "None") {
        e->value = Value::none();
      } else {
        e->k = Expr::K::kName;
        e->name = n;
      }
      return e;
    }
    if (is_op("(")) {
      next();
      auto e = parse_expr();
      if (is_op(",")) {  // a tuple: evaluated as a list
        auto l = make(Expr::K::kList, line);
        l->args.push_back(std::move(e));
        while (is_op(",")) {
          next();
          if (is_op(")")) break;
          l->args.push_back(parse_expr());
        }
        e = std::move(l);
      }
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      next();
      auto e = make(Expr::K::kList, line);
      while (!is_op("]")) {
        e->args.push_back(parse_expr());
        if (!is_op(",")) break;
        next();
      }
      expect_op("]");
      return e;
    }
    if (is_op("{")) {
      next();
      auto e = make(Expr::K::kDict, line);
      while (!is_op("}")) {
        e->args.push_back(parse_expr());
        expect_op(":");
        e->args.push_back(parse_expr());
        if (!is_op(",")) break;
        next();
      }
      expect_op("}");
      return e;
    }
    fail(line, "unexpected '" + tk.text + "' in an expression");
  }

  std::vector<Tok> t_;
  int depth_ = 0;
  size_t i_ = 0;
};

// --- evaluation --------------------------------------------------------------------------------------

using Kind = Value::Kind;

bool truthy(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return v.b;
    case Kind::kInt:
      return v.i != 0;
    case Kind::kFloat:
      return v.f != 0.0;
    case Kind::kString:
      return !v.s.empty();
    case Kind::kList:
      return !v.list->empty();
    case Kind::kDict:
      return !v.dict->empty();
  }
  return false;
}

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::string float_str(double f) {
  if (std::isfinite(f) && f == std::floor(f) && std::fabs(f) < 1e16) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.1f", f);
    return buf;
  }
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", f);
  return buf;
}

std::string to_json(const Value& v);
std::string repr(const Value& v);

// Python str(): what {{ }} prints.
std::string to_str(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
      return "";
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return v.b ? "True" : "False";
    case Kind::kInt:
      return std::to_string(v.i);
    case Kind::kFloat:
      return float_str(v.f);
    case Kind::kString:
      return v.s;
    case Kind::kList:
    case Kind::kDict:
      return repr(v);
  }
  return "";
}

std::string repr(const Value& v) {
  if (v.kind == Kind::kString) {
    std::string out = "'";
    for (char c : v.s)
      out += c == '\'' ? std::string("\\'") : c == '\n' ? std::string("\\n") : std::string(1, c);
    return out + "'";
  }
  if (v.kind == Kind::kList) {
    std::string out = "[";
    for (size_t i = 0; i < v.list->size(); ++i) out += (i ? ", " : "") + repr((*v.list)[i]);
    return out + "]";
  }
  if (v.kind == Kind::kDict) {
    std::string out = "{";
    for (size_t i = 0; i < v.dict->size(); ++i)
      out += (i ? ", " : "") + repr(Value::string((*v.dict)[i].first)) + ": " + repr((*v.dict)[i].second);
    return out + "}";
  }
  return to_str(v);
}

std::string to_json(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return "null";
    case Kind::kBool:
      return v.b ? "true" : "false";
    case Kind::kInt:
      return std::to_string(v.i);
    case Kind::kFloat:
      return float_str(v.f);
    case Kind::kString:
      return json_quote(v.s);
    case Kind::kList: {
      std::string out = "[";
      for (size_t i = 0; i < v.list->size(); ++i) out += (i ? ", " : "") + to_json((*v.list)[i]);
      return out + "]";
    }
    case Kind::kDict: {
      std::string out = "{";
      for (size_t i = 0; i < v.dict->size(); ++i)
        out += (i ? ", " : "") + json_quote((*v.dict)[i].first) + ": " + to_json((*v.dict)[i].second);
      return out + "}";
    }
  }
  return "null";
}

bool is_number(const Value& v) {
  return v.kind == Kind::kInt || v.kind == Kind::kFloat || v.kind == Kind::kBool;
}
double num(const Value& v) {
  return v.kind == Kind::kFloat ? v.f : v.kind == Kind::kInt ? static_cast<double>(v.i) : v.b;
}
int64_t inum(const Value& v) {
  return v.kind == Kind::kInt ? v.i : v.kind == Kind::kBool ? v.b : static_cast<int64_t>(v.f);
}

bool equal(const Value& a, const Value& b) {
  if (is_number(a) && is_number(b)) return num(a) == num(b);
  if (a.kind != b.kind)
    return (a.kind == Kind::kUndefined || a.kind == Kind::kNone) &&
           (b.kind == Kind::kUndefined || b.kind == Kind::kNone) && a.kind == b.kind;
  switch (a.kind) {
    case Kind::kString:
      return a.s == b.s;
    case Kind::kList:
      if (a.list->size() != b.list->size()) return false;
      for (size_t i = 0; i < a.list->size(); ++i)
        if (!equal((*a.list)[i], (*b.list)[i])) return false;
      return true;
    case Kind::kDict:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : *a.dict) {
        const Value* o = b.get(k);
        if (!o || !equal(v, *o)) return false;
      }
      return true;
    default:
      return true;  // undefined == undefined, none == none
  }
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kUndefined:
      return "undefined";
    case Kind::kNone:
      return "none";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "string";
    case Kind::kList:
      return "list";
    case Kind::kDict:
      return "dict";
  }
  return "?";
}

std::string strip_chars(const std::string& s, const std::string& chars, bool left, bool right) {
  size_t b = 0, e = s.size();
  auto in = [&](char c) { return chars.find(c) != std::string::npos; };
  if (left)
    while (b < e && in(s[b])) ++b;
  if (right)
    while (e > b && in(s[e - 1])) --e;
  return s.substr(b, e - b);
}
const std::string kWhitespace = " \t\n\r\f\v";

// Lists and dicts are shared by reference; the one place a value can be stored into a mutable object is a
// namespace attribute, where a deep copy keeps the object graph acyclic (reference-counted, no leak).
Value deep_copy(const Value& v, const std::function<void()>& tick) {
  tick();
  if (v.kind == Kind::kList) {
    Value l = Value::new_list();
    for (const auto& x : *v.list) l.list->push_back(deep_copy(x, tick));
    return l;
  }
  if (v.kind == Kind::kDict) {
    Value d = Value::new_dict();
    for (const auto& [k, x] : *v.dict) d.dict->emplace_back(k, deep_copy(x, tick));
    return d;
  }
  return v;
}

// Work limits: a template is data from a model file, and rendering it must finish.
constexpr int64_t kMaxSteps = 1'000'000;  // statements, expressions, copied and generated items
constexpr size_t kMaxOutput = 64u << 20;  // bytes of rendered text and of any one string

class Evaluator {
 public:
  explicit Evaluator(const Value& context) { scopes_.push_back(context.dict ? *context.dict : Dict{}); }

  static std::string concat(int line, const std::string& a, const std::string& b) {
    if (a.size() + b.size() > kMaxOutput)
      fail(line, "a string longer than " + std::to_string(kMaxOutput) + " bytes");
    return a + b;
  }

  void tick(int line, int64_t n = 1) {
    steps_ += n;
    if (steps_ > kMaxSteps) fail(line, "rendering takes more than " + std::to_string(kMaxSteps) + " steps");
  }

  void exec(const Node& n, std::string& out) {
    tick(n.line);
    if (out.size() > kMaxOutput)
      fail(n.line, "the rendered text exceeds " + std::to_string(kMaxOutput) + " bytes");
    switch (n.k) {
      case Node::K::kSeq:
        for (const auto& c : n.children) exec(*c, out);
        break;
      case Node::K::kText:
        out += n.text;
        break;
      case Node::K::kOutput:
        out += to_str(eval(*n.exprs[0]));
        break;
      case Node::K::kIf: {
        for (size_t i = 0; i < n.exprs.size(); ++i)
          if (truthy(eval(*n.exprs[i]))) {
            exec(*n.children[i], out);
            return;
          }
        if (n.has_else) exec(*n.children.back(), out);
        break;
      }
      case Node::K::kFor:
        exec_for(n, out);
        break;
      case Node::K::kSet: {
        Value v = eval(*n.exprs[0]);
        if (n.names.size() == 1) {
          assign(scopes_.back(), n.names[0], std::move(v));
        } else {
          Value ns = lookup(n.names[0]);
          if (ns.kind != Kind::kDict) fail(n.line, "'" + n.names[0] + "' is not a namespace");
          ns.set(n.names[1], deep_copy(v, [&] {
                   tick(n.line);
                 }));  // a copy: storing a namespace in itself would make a cycle
        }
        break;
      }
    }
  }

 private:
  static void assign(Dict& scope, const std::string& name, Value v) {
    for (auto& [k, old] : scope)
      if (k == name) {
        old = std::move(v);
        return;
      }
    scope.emplace_back(name, std::move(v));
  }
  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it)
      for (const auto& [k, v] : *it)
        if (k == name) return v;
    return Value{};
  }

  void exec_for(const Node& n, std::string& out) {
    const Value iter = eval(*n.exprs[0]);
    List items;
    if (iter.kind == Kind::kList) {
      items = *iter.list;
    } else if (iter.kind == Kind::kDict) {
      for (const auto& kv : *iter.dict) items.push_back(Value::string(kv.first));
    } else if (iter.kind == Kind::kString) {
      for (char c : iter.s) items.push_back(Value::string(std::string(1, c)));
    } else if (iter.kind != Kind::kUndefined && iter.kind != Kind::kNone) {
      fail(n.line, std::string("cannot loop over a ") + kind_name(iter.kind));
    }
    // The "if" of a for filters items before loop.* is computed, as Jinja does.
    List kept;
    for (auto& item : items) {
      if (n.exprs.size() > 1) {
        scopes_.emplace_back();
        bind(n, item, scopes_.back());
        const bool keep = truthy(eval(*n.exprs[1]));
        scopes_.pop_back();
        if (!keep) continue;
      }
      kept.push_back(std::move(item));
    }
    if (kept.empty()) {
      if (n.has_else) exec(*n.children[1], out);
      return;
    }
    const auto len = static_cast<int64_t>(kept.size());
    for (int64_t i = 0; i < len; ++i) {
      scopes_.emplace_back();
      Dict& scope = scopes_.back();
      bind(n, kept[static_cast<size_t>(i)], scope);
      Value loop = Value::new_dict();
      loop.set("index0", Value::integer(i));
      loop.set("index", Value::integer(i + 1));
      loop.set("revindex0", Value::integer(len - 1 - i));
      loop.set("revindex", Value::integer(len - i));
      loop.set("first", Value::boolean(i == 0));
      loop.set("last", Value::boolean(i + 1 == len));
      loop.set("length", Value::integer(len));
      loop.set("previtem", i > 0 ? kept[static_cast<size_t>(i - 1)] : Value{});
      loop.set("nextitem", i + 1 < len ? kept[static_cast<size_t>(i + 1)] : Value{});
      assign(scope, "loop", std::move(loop));
      exec(*n.children[0], out);
      scopes_.pop_back();
    }
  }
  void bind(const Node& n, const Value& item, Dict& scope) {
    if (n.names.size() == 1) {
      assign(scope, n.names[0], item);
      return;
    }
    if (item.kind != Kind::kList || item.list->size() != n.names.size())
      fail(n.line, "cannot unpack a loop item into " + std::to_string(n.names.size()) + " names");
    for (size_t k = 0; k < n.names.size(); ++k) assign(scope, n.names[k], (*item.list)[k]);
  }

  Value eval(const Expr& e) {
    tick(e.line);
    switch (e.k) {
      case Expr::K::kLiteral:
        return e.value;
      case Expr::K::kName:
        return lookup(e.name);
      case Expr::K::kList: {
        Value l = Value::new_list();
        for (const auto& a : e.args) l.list->push_back(eval(*a));
        return l;
      }
      case Expr::K::kDict: {
        Value d = Value::new_dict();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2)
          d.set(to_str(eval(*e.args[i])), eval(*e.args[i + 1]));
        return d;
      }
      case Expr::K::kAttr: {
        const Value obj = eval(*e.args[0]);
        if (const Value* v = obj.get(e.name)) return *v;
        return Value{};
      }
      case Expr::K::kIndex:
        return index(e, eval(*e.args[0]), eval(*e.args[1]));
      case Expr::K::kSlice:
        return slice(e, eval(*e.args[0]));
      case Expr::K::kCall:
        return call(e);
      case Expr::K::kFilter:
        return filter(e);
      case Expr::K::kTest: {
        const bool r = test(e);
        return Value::boolean(e.negated ? !r : r);
      }
      case Expr::K::kNot:
        return Value::boolean(!truthy(eval(*e.args[0])));
      case Expr::K::kNeg: {
        const Value v = eval(*e.args[0]);
        if (v.kind == Kind::kInt) return Value::integer(-v.i);
        if (v.kind == Kind::kFloat) return Value::number(-v.f);
        fail(e.line, std::string("cannot negate a ") + kind_name(v.kind));
      }
      case Expr::K::kBinary:
        return binary(e);
      case Expr::K::kCond:
        if (truthy(eval(*e.args[1]))) return eval(*e.args[0]);
        return e.args[2] ? eval(*e.args[2]) : Value{};
    }
    return Value{};
  }

  Value index(const Expr& e, const Value& obj, const Value& key) {
    if (obj.kind == Kind::kDict) {
      if (const Value* v = obj.get(to_str(key))) return *v;
      return Value{};
    }
    if (obj.kind == Kind::kList || obj.kind == Kind::kString) {
      if (key.kind != Kind::kInt) fail(e.line, "an index must be an integer");
      const auto n = static_cast<int64_t>(obj.kind == Kind::kList ? obj.list->size() : obj.s.size());
      const int64_t i = key.i < 0 ? key.i + n : key.i;
      if (i < 0 || i >= n) return Value{};
      return obj.kind == Kind::kList ? (*obj.list)[static_cast<size_t>(i)]
                                     : Value::string(std::string(1, obj.s[static_cast<size_t>(i)]));
    }
    return Value{};
  }

  Value slice(const Expr& e, const Value& obj) {
    if (obj.kind != Kind::kList && obj.kind != Kind::kString)
      fail(e.line, std::string("cannot slice a ") + kind_name(obj.kind));
    const auto n = static_cast<int64_t>(obj.kind == Kind::kList ? obj.list->size() : obj.s.size());
    auto part = [&](size_t k, int64_t dflt) {
      if (!e.args[k]) return dflt;
      const Value v = eval(*e.args[k]);
      if (v.kind == Kind::kNone) return dflt;
      if (v.kind != Kind::kInt) fail(e.line, "slice bounds must be integers");
      return v.i;
    };
    const int64_t step = part(3, 1);
    if (step == 0) fail(e.line, "slice step cannot be zero");
    auto clamp = [&](int64_t i) {
      if (i < 0) i += n;
      if (step > 0) return std::clamp<int64_t>(i, 0, n);
      return std::clamp<int64_t>(i, -1, n - 1);
    };
    int64_t start = e.args[1] ? clamp(part(1, 0)) : (step > 0 ? 0 : n - 1);
    int64_t stop = e.args[2] ? clamp(part(2, n)) : (step > 0 ? n : -1);
    Value out = obj.kind == Kind::kList ? Value::new_list() : Value::string("");
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      if (obj.kind == Kind::kList) {
        out.list->push_back((*obj.list)[static_cast<size_t>(i)]);
      } else {
        out.s += obj.s[static_cast<size_t>(i)];
      }
    }
    return out;
  }

  std::vector<Value> eval_args(const Expr& e, size_t first) {
    std::vector<Value> v;
    for (size_t i = first; i < e.args.size(); ++i) v.push_back(eval(*e.args[i]));
    return v;
  }

  Value call(const Expr& e) {
    const Expr& callee = *e.args[0];
    std::vector<Value> args = eval_args(e, 1);
    const size_t n_pos = args.size() - e.kwnames.size();
    if (callee.k == Expr::K::kName) {
      if (callee.name == "raise_exception")
        throw JinjaError{one_line(args.empty() ? "raise_exception()" : to_str(args[0])), true};
      if (callee.name == "namespace") {
        Value ns = Value::new_dict();
        for (size_t i = 0; i < e.kwnames.size(); ++i) ns.set(e.kwnames[i], args[n_pos + i]);
        return ns;
      }
      if (callee.name == "range") {
        int64_t a = 0, b = 0, step = 1;
        if (n_pos == 1) b = inum(args[0]);
        if (n_pos >= 2) a = inum(args[0]), b = inum(args[1]);
        if (n_pos >= 3) step = inum(args[2]);
        if (step == 0) fail(e.line, "range() step cannot be zero");
        Value l = Value::new_list();
        for (int64_t i = a; step > 0 ? i < b : i > b; i += step) {
          tick(e.line);
          l.list->push_back(Value::integer(i));
        }
        return l;
      }
      fail(e.line, "'" + callee.name + "' is not a function");
    }
    if (callee.k == Expr::K::kAttr) {
      const Value obj = eval(*callee.args[0]);
      const std::string& m = callee.name;
      if (obj.kind == Kind::kString) {
        const std::string chars = n_pos > 0 && args[0].kind == Kind::kString ? args[0].s : kWhitespace;
        if (m == "strip") return Value::string(strip_chars(obj.s, chars, true, true));
        if (m == "lstrip") return Value::string(strip_chars(obj.s, chars, true, false));
        if (m == "rstrip") return Value::string(strip_chars(obj.s, chars, false, true));
        if (m == "lower" || m == "upper") {
          std::string s = obj.s;
          for (char& c : s)
            c = static_cast<char>(m == "lower" ? std::tolower(static_cast<unsigned char>(c))
                                               : std::toupper(static_cast<unsigned char>(c)));
          return Value::string(s);
        }
        if ((m == "startswith" || m == "endswith") && n_pos == 1 && args[0].kind == Kind::kString) {
          const std::string& x = args[0].s;
          const bool r = x.size() <= obj.s.size() &&
                         (m == "startswith" ? obj.s.compare(0, x.size(), x) == 0
                                            : obj.s.compare(obj.s.size() - x.size(), x.size(), x) == 0);
          return Value::boolean(r);
        }
        if (m == "split") {
          Value l = Value::new_list();
          if (n_pos >= 1 && args[0].kind == Kind::kString && !args[0].s.empty()) {
            size_t b = 0;
            for (size_t p; (p = obj.s.find(args[0].s, b)) != std::string::npos; b = p + args[0].s.size())
              l.list->push_back(Value::string(obj.s.substr(b, p - b)));
            l.list->push_back(Value::string(obj.s.substr(b)));
          } else {
            size_t b = 0;
            while (true) {
              b = obj.s.find_first_not_of(kWhitespace, b);
              if (b == std::string::npos) break;
              const size_t p = obj.s.find_first_of(kWhitespace, b);
              l.list->push_back(
                  Value::string(obj.s.substr(b, p == std::string::npos ? std::string::npos : p - b)));
              if (p == std::string::npos) break;
              b = p;
            }
          }
          return l;
        }
        if (m == "replace" && n_pos == 2)
          return Value::string(replace_all(obj.s, to_str(args[0]), to_str(args[1])));
      }
      if (obj.kind == Kind::kDict) {
        if (m == "items" || m == "keys" || m == "values") {
          Value l = Value::new_list();
          for (const auto& [k, v] : *obj.dict) {
            if (m == "keys") {
              l.list->push_back(Value::string(k));
            } else if (m == "values") {
              l.list->push_back(v);
            } else {
              Value pair = Value::new_list();
              pair.list->push_back(Value::string(k));
              pair.list->push_back(v);
              l.list->push_back(std::move(pair));
            }
          }
          return l;
        }
        if (m == "get" && n_pos >= 1) {
          if (const Value* v = obj.get(to_str(args[0]))) return *v;
          return n_pos >= 2 ? args[1] : Value::none();
        }
      }
      fail(e.line, "unsupported method '" + m + "' of a " + kind_name(obj.kind));
    }
    fail(e.line, "this expression cannot be called");
  }

  static std::string replace_all(std::string s, const std::string& from, const std::string& to) {
    if (from.empty()) return s;
    for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size()))
      s.replace(p, from.size(), to);
    return s;
  }

  Value filter(const Expr& e) {
    const Value v = eval(*e.args[0]);
    std::vector<Value> args = eval_args(e, 1);
    const std::string& f = e.name;
    if (f == "trim") return Value::string(strip_chars(to_str(v), kWhitespace, true, true));
    if (f == "length" || f == "count") {
      if (v.kind == Kind::kString) return Value::integer(static_cast<int64_t>(v.s.size()));
      if (v.kind == Kind::kList) return Value::integer(static_cast<int64_t>(v.list->size()));
      if (v.kind == Kind::kDict) return Value::integer(static_cast<int64_t>(v.dict->size()));
      if (v.kind == Kind::kUndefined) return Value::integer(0);
      fail(e.line, std::string("a ") + kind_name(v.kind) + " has no length");
    }
    if (f == "lower" || f == "upper" || f == "capitalize" || f == "title") {
      std::string s = to_str(v);
      bool start = true;
      for (char& c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (f == "lower") c = static_cast<char>(std::tolower(u));
        if (f == "upper") c = static_cast<char>(std::toupper(u));
        if (f == "capitalize") c = static_cast<char>(start ? std::toupper(u) : std::tolower(u));
        if (f == "title") c = static_cast<char>(start ? std::toupper(u) : std::tolower(u));
        start = f == "title" ? !std::isalnum(u) : false;
      }
      return Value::string(s);
    }
    if (f == "string") return Value::string(to_str(v));
    if (f == "safe" || f == "e" || f == "escape") return v;  // no autoescaping in chat templates
    if (f == "int") {
      if (v.kind == Kind::kString) {
        try {
          return Value::integer(std::stoll(v.s));
        } catch (...) {
          return Value::integer(0);
        }
      }
      return Value::integer(is_number(v) ? inum(v) : 0);
    }
    if (f == "float") return Value::number(is_number(v) ? num(v) : 0.0);
    if (f == "abs")
      return v.kind == Kind::kInt ? Value::integer(v.i < 0 ? -v.i : v.i) : Value::number(std::fabs(num(v)));
    if (f == "first" || f == "last") {
      if (v.kind == Kind::kList)
        return v.list->empty() ? Value{} : (f == "first" ? v.list->front() : v.list->back());
      if (v.kind == Kind::kString)
        return v.s.empty() ? Value{} : Value::string(std::string(1, f == "first" ? v.s.front() : v.s.back()));
      return Value{};
    }
    if (f == "join") {
      const std::string sep = args.empty() ? "" : to_str(args[0]);
      std::string out;
      if (v.kind == Kind::kList)
        for (size_t i = 0; i < v.list->size(); ++i) out += (i ? sep : "") + to_str((*v.list)[i]);
      return Value::string(out);
    }
    if (f == "default" || f == "d") {
      const bool use_default =
          v.kind == Kind::kUndefined || (args.size() > 1 && truthy(args[1]) && !truthy(v));
      return use_default ? (args.empty() ? Value::string("") : args[0]) : v;
    }
    if (f == "tojson") return Value::string(to_json(v));
    if (f == "replace" && args.size() >= 2)
      return Value::string(replace_all(to_str(v), to_str(args[0]), to_str(args[1])));
    if (f == "list") {
      if (v.kind == Kind::kList) return v;
      Value l = Value::new_list();
      if (v.kind == Kind::kString)
        for (char c : v.s) l.list->push_back(Value::string(std::string(1, c)));
      if (v.kind == Kind::kDict)
        for (const auto& kv : *v.dict) l.list->push_back(Value::string(kv.first));
      return l;
    }
    // xs|select(test, args...), xs|reject(...), xs|selectattr("attr"[, test, args...]), xs|rejectattr(...):
    // the items (or their attribute) passing the test; without a test, the truthy ones.
    if (f == "select" || f == "reject" || f == "selectattr" || f == "rejectattr") {
      const bool by_attr = f == "selectattr" || f == "rejectattr";
      const bool keep_passing = f == "select" || f == "selectattr";
      if (by_attr && args.empty()) fail(e.line, "'" + f + "' needs an attribute name");
      const size_t t0 = by_attr ? 1 : 0;
      const std::vector<Value> targs(args.begin() + std::min(args.size(), t0 + 1), args.end());
      Value out = Value::new_list();
      if (v.kind != Kind::kList) return out;
      for (const Value& item : *v.list) {
        Value x = item;
        if (by_attr) {
          const Value* a = item.kind == Kind::kDict ? item.get(to_str(args[0])) : nullptr;
          x = a ? *a : Value{};
        }
        const bool pass = args.size() > t0 ? apply_test(to_str(args[t0]), x, targs, e.line) : truthy(x);
        if (pass == keep_passing) out.list->push_back(item);
      }
      return out;
    }
    if (f == "reverse") {
      if (v.kind == Kind::kString) return Value::string(std::string(v.s.rbegin(), v.s.rend()));
      if (v.kind == Kind::kList) {
        Value l = Value::new_list();
        l.list->assign(v.list->rbegin(), v.list->rend());
        return l;
      }
      return v;
    }
    fail(e.line, "unsupported filter '" + f + "'");
  }

  bool test(const Expr& e) {
    const Value v = eval(*e.args[0]);
    return apply_test(e.name, v, eval_args(e, 1), e.line);
  }

  // The test `t` (is t(args...)) on a value; also what select/reject and selectattr/rejectattr apply.
  bool apply_test(const std::string& t, const Value& v, const std::vector<Value>& args, int line) {
    if (t == "defined") return v.kind != Kind::kUndefined;
    if (t == "undefined") return v.kind == Kind::kUndefined;
    if (t == "none") return v.kind == Kind::kNone;
    if (t == "string") return v.kind == Kind::kString;
    if (t == "number") return v.kind == Kind::kInt || v.kind == Kind::kFloat;
    if (t == "integer") return v.kind == Kind::kInt;
    if (t == "float") return v.kind == Kind::kFloat;
    if (t == "boolean") return v.kind == Kind::kBool;
    if (t == "true") return v.kind == Kind::kBool && v.b;
    if (t == "false") return v.kind == Kind::kBool && !v.b;
    if (t == "mapping") return v.kind == Kind::kDict;
    if (t == "sequence" || t == "iterable")
      return v.kind == Kind::kList || v.kind == Kind::kString || (t == "iterable" && v.kind == Kind::kDict);
    if (t == "even" || t == "odd") {
      if (v.kind != Kind::kInt) fail(line, "'" + t + "' needs an integer");
      return (v.i % 2 == 0) == (t == "even");
    }
    if ((t == "eq" || t == "equalto" || t == "sameas") && !args.empty()) return equal(v, args[0]);
    if (t == "ne" && !args.empty()) return !equal(v, args[0]);
    fail(line, "unsupported test '" + t + "'");
  }

  Value binary(const Expr& e) {
    const std::string& op = e.name;
    if (op == "and") {
      Value a = eval(*e.args[0]);
      return truthy(a) ? eval(*e.args[1]) : a;
    }
    if (op == "or") {
      Value a = eval(*e.args[0]);
      return truthy(a) ? a : eval(*e.args[1]);
    }
    const Value a = eval(*e.args[0]);
    const Value b = eval(*e.args[1]);
    if (op == "~") return Value::string(concat(e.line, to_str(a), to_str(b)));
    if (op == "==") return Value::boolean(equal(a, b));
    if (op == "!=") return Value::boolean(!equal(a, b));
    if (op == "in" || op == "not in") {
      bool r = false;
      if (b.kind == Kind::kString) {
        r = b.s.find(to_str(a)) != std::string::npos;
      } else if (b.kind == Kind::kList) {
        for (const auto& x : *b.list) r = r || equal(a, x);
      } else if (b.kind == Kind::kDict) {
        r = b.get(to_str(a)) != nullptr;
      } else if (b.kind != Kind::kUndefined && b.kind != Kind::kNone) {
        fail(e.line, std::string("'in' needs a string, list or dict, not a ") + kind_name(b.kind));
      }
      return Value::boolean(op == "in" ? r : !r);
    }
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int c = 0;
      if (is_number(a) && is_number(b)) {
        c = num(a) < num(b) ? -1 : num(a) > num(b) ? 1 : 0;
      } else if (a.kind == Kind::kString && b.kind == Kind::kString) {
        c = a.s.compare(b.s);
      } else {
        fail(e.line, std::string("cannot compare a ") + kind_name(a.kind) + " with a " + kind_name(b.kind));
      }
      return Value::boolean(op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0);
    }
    if (op == "+") {
      if (a.kind == Kind::kString && b.kind == Kind::kString) return Value::string(concat(e.line, a.s, b.s));
      if (a.kind == Kind::kList && b.kind == Kind::kList) {
        tick(e.line, static_cast<int64_t>(a.list->size() + b.list->size()));
        Value l = Value::new_list();
        *l.list = *a.list;
        l.list->insert(l.list->end(), b.list->begin(), b.list->end());
        return l;
      }
    }
    if (op == "*" && ((a.kind == Kind::kString && b.kind == Kind::kInt) ||
                      (a.kind == Kind::kInt && b.kind == Kind::kString))) {
      const Value& s = a.kind == Kind::kString ? a : b;
      std::string out;
      for (int64_t i = 0; i < (a.kind == Kind::kInt ? a.i : b.i); ++i) {
        if (out.size() + s.s.size() > kMaxOutput)
          fail(e.line, "a string longer than " + std::to_string(kMaxOutput) + " bytes");
        tick(e.line);
        out += s.s;
      }
      return Value::string(out);
    }
    if (!is_number(a) || !is_number(b))
      fail(e.line, "cannot apply '" + op + "' to a " + kind_name(a.kind) + " and a " + kind_name(b.kind));
    const bool ints = a.kind != Kind::kFloat && b.kind != Kind::kFloat;
    if (op == "/") {
      if (num(b) == 0) fail(e.line, "division by zero");
      return Value::number(num(a) / num(b));
    }
    if (op == "//" || op == "%") {
      if (num(b) == 0) fail(e.line, op == "%" ? "modulo by zero" : "division by zero");
      if (ints) {
        const int64_t x = inum(a), y = inum(b);
        int64_t q = x / y, r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) --q, r += y;  // Python floors
        return Value::integer(op == "//" ? q : r);
      }
      const double q = std::floor(num(a) / num(b));
      return Value::number(op == "//" ? q : num(a) - q * num(b));
    }
    if (ints) {
      const int64_t x = inum(a), y = inum(b);
      return Value::integer(op == "+" ? x + y : op == "-" ? x - y : x * y);
    }
    return Value::number(op == "+" ? num(a) + num(b) : op == "-" ? num(a) - num(b) : num(a) * num(b));
  }

  std::vector<Dict> scopes_;
  int64_t steps_ = 0;
};

}  // namespace

Template::Template() = default;
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

Result<Template> Template::parse(std::string_view source, const std::string& name) {
  try {
    Parser p(Lexer(source).run());
    Template t;
    t.root_ = p.parse_all();
    t.name_ = name;
    return t;
  } catch (const JinjaError& e) {
    return Error::data(name + ": chat template: " + e.msg);
  } catch (const std::exception& e) {  // std::stoll on an out-of-range literal
    return Error::data(name + ": chat template: " + one_line(e.what()));
  }
}

Result<std::string> Template::render(const Value& context) const {
  std::string out;
  try {
    Evaluator ev(context);
    ev.exec(*root_, out);
  } catch (const JinjaError& e) {
    if (e.raised) return Error::data(name_ + ": the chat template rejected the messages: " + e.msg);
    return Error::data(name_ + ": chat template: " + e.msg);
  }
  return out;
}

}  // namespace mixtral::tok::jinja
