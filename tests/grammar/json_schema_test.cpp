// JSON Schema -> GBNF: per keyword, instances accepted or rejected through parse_gbnf + Matcher, and
// refusals naming the keyword and its pointer. Instances are written by hand (the expected verdict is the
// JSON Schema spec's, checked by reading, and for the suite-wide check see schema_suite.cpp against the
// official JSON-Schema-Test-Suite).
#include "grammar/json_schema.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "grammar/grammar.h"

namespace mixtral::grammar {
namespace {

using json = nlohmann::ordered_json;

GrammarPtr compile(const json& schema, const SchemaOptions& opts = {}) {
  auto g = json_schema_to_gbnf(schema, opts);
  EXPECT_TRUE(g.ok()) << (g.ok() ? "" : g.error().message);
  if (!g.ok()) return nullptr;
  auto p = parse_gbnf(*g);
  EXPECT_TRUE(p.ok()) << (p.ok() ? "" : p.error().message) << "\n" << *g;
  return p.ok() ? *p : nullptr;
}

bool accepts(const GrammarPtr& g, const std::string& text) {
  if (!g) return false;
  Matcher m(g);
  return m.advance_bytes(text) && m.can_end();
}

// A JSON string of n 'x' characters.
std::string quoted(size_t n) {
  std::string s(n + 2, 'x');
  s.front() = s.back() = '"';
  return s;
}

std::string refusal(const json& schema, const SchemaOptions& opts = {}) {
  auto g = json_schema_to_gbnf(schema, opts);
  return g.ok() ? std::string("(compiled)") : g.error().message;
}

TEST(JsonSchema, TypesAndLists) {
  auto g = compile(json::parse(R"({"type": ["string", "null"]})"));
  EXPECT_TRUE(accepts(g, R"("a\"b\\c\u00e9")"));
  EXPECT_TRUE(accepts(g, "null"));
  EXPECT_FALSE(accepts(g, "1"));
  EXPECT_FALSE(accepts(g, "true"));
  EXPECT_FALSE(accepts(g, "\"a\nb\""));  // a raw control character is not JSON
  auto b = compile(json::parse(R"({"type": "boolean"})"));
  EXPECT_TRUE(accepts(b, "false"));
  EXPECT_FALSE(accepts(b, "\"false\""));
  auto any = compile(json::parse("{}"));
  EXPECT_TRUE(accepts(any, R"({"a": [1, 2.5e3, {"b": null}], "c": "d"})"));
  EXPECT_FALSE(accepts(any, R"({"a": })"));
}

TEST(JsonSchema, Integers) {
  auto g = compile(json::parse(R"({"type": "integer", "minimum": -12, "maximum": 305})"));
  for (int v = -20; v <= 320; ++v) EXPECT_EQ(accepts(g, std::to_string(v)), v >= -12 && v <= 305) << v;
  EXPECT_FALSE(accepts(g, "1.5"));
  EXPECT_FALSE(accepts(g, "007"));
  EXPECT_FALSE(accepts(g, "-0"));
  auto ex = compile(json::parse(R"({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 1000})"));
  for (int v : {-1, 0, 1, 999, 1000}) EXPECT_EQ(accepts(ex, std::to_string(v)), v > 0 && v < 1000) << v;
  // draft-04 boolean exclusive bounds
  auto old = compile(json::parse(R"({"type": "integer", "minimum": 5, "exclusiveMinimum": true})"));
  EXPECT_FALSE(accepts(old, "5"));
  EXPECT_TRUE(accepts(old, "6"));
  EXPECT_TRUE(accepts(old, "123456789"));
  // fractional bounds round inward
  auto fr = compile(json::parse(R"({"type": "integer", "minimum": 1.5, "maximum": 3.5})"));
  EXPECT_FALSE(accepts(fr, "1"));
  EXPECT_TRUE(accepts(fr, "2"));
  EXPECT_TRUE(accepts(fr, "3"));
  EXPECT_FALSE(accepts(fr, "4"));
  // the digit policy: at most 16 digits
  auto un = compile(json::parse(R"({"type": "integer"})"));
  EXPECT_TRUE(accepts(un, "9999999999999999"));
  EXPECT_FALSE(accepts(un, "99999999999999999"));
}

TEST(JsonSchema, MultipleOfIntegers) {
  auto g = compile(json::parse(R"({"type": "number", "multipleOf": 6})"));
  for (int v = -40; v <= 400; ++v) EXPECT_EQ(accepts(g, std::to_string(v)), v % 6 == 0) << v;
  EXPECT_FALSE(accepts(g, "6.5"));
  EXPECT_TRUE(accepts(g, "1000000000000002"));  // 16 digits
  EXPECT_NE(refusal(json::parse(R"({"multipleOf": 0.5})"))
                .find("/multipleOf: keyword 'multipleOf' is not supported"),
            std::string::npos);
  EXPECT_NE(refusal(json::parse(R"({"multipleOf": 3, "minimum": 1})")).find("keyword 'multipleOf'"),
            std::string::npos);
}

TEST(JsonSchema, NotOfTypes) {
  auto g = compile(json::parse(R"({"not": {"type": ["string", "null"]}})"));
  EXPECT_TRUE(accepts(g, "1.5"));
  EXPECT_TRUE(accepts(g, "[]"));
  EXPECT_FALSE(accepts(g, R"("s")"));
  EXPECT_FALSE(accepts(g, "null"));
  auto e = compile(json::parse(R"({"enum": [1, 1.5, "a"], "not": {"type": "integer"}})"));
  EXPECT_FALSE(accepts(e, "1"));
  EXPECT_TRUE(accepts(e, "1.5"));
  EXPECT_TRUE(accepts(e, R"("a")"));
  EXPECT_NE(
      refusal(json::parse(R"({"not": {"type": "integer"}})")).find("/not: keyword 'not' is not supported"),
      std::string::npos);
  EXPECT_NE(refusal(json::parse(R"({"not": {"minimum": 3}})")).find("/not: keyword 'not' is not supported"),
            std::string::npos);
}

TEST(JsonSchema, NumberBoundsExact) {
  auto g = compile(json::parse(R"({"type": "number", "minimum": -1.25, "exclusiveMaximum": 2.5})"));
  // every decimal with up to 3 fraction digits in [-4, 4], against the bounds computed here
  for (int k = -4000; k <= 4000; k += 7) {
    const double v = k / 1000.0;
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3f", v);
    std::string s = buf;
    if (s == "-0.000") continue;
    EXPECT_EQ(accepts(g, s), k >= -1250 && k < 2500) << s;
  }
  EXPECT_TRUE(accepts(g, "-1.25"));
  EXPECT_TRUE(accepts(g, "-1.2500"));
  EXPECT_FALSE(accepts(g, "-1.2500001"));
  EXPECT_TRUE(accepts(g, "2.4999999999999999"));
  EXPECT_FALSE(accepts(g, "2.5"));
  EXPECT_FALSE(accepts(g, "2.50"));
  EXPECT_TRUE(accepts(g, "0"));
  EXPECT_FALSE(accepts(g, "1e0"));  // bounded numbers are written without exponent
  auto tiny = compile(json::parse(R"({"type": "number", "exclusiveMinimum": 0, "maximum": 0.001})"));
  EXPECT_FALSE(accepts(tiny, "0"));
  EXPECT_FALSE(accepts(tiny, "0.0000"));
  EXPECT_TRUE(accepts(tiny, "0.0000000001"));
  EXPECT_TRUE(accepts(tiny, "0.001"));
  EXPECT_TRUE(accepts(tiny, "0.0010"));
  EXPECT_FALSE(accepts(tiny, "0.0011"));
  auto neg = compile(json::parse(R"({"type": "number", "maximum": -100.5})"));
  EXPECT_TRUE(accepts(neg, "-100.5"));
  EXPECT_TRUE(accepts(neg, "-1000"));
  EXPECT_FALSE(accepts(neg, "-100.49"));
  EXPECT_FALSE(accepts(neg, "5"));
  auto none = json_schema_to_gbnf(json::parse(R"({"type": "number", "minimum": 3, "exclusiveMaximum": 3})"));
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().message.find("admits no value"), std::string::npos);
}

TEST(JsonSchema, Strings) {
  auto g = compile(json::parse(R"({"type": "string", "minLength": 2, "maxLength": 3})"));
  EXPECT_FALSE(accepts(g, R"("a")"));
  EXPECT_TRUE(accepts(g, R"("ab")"));
  EXPECT_TRUE(accepts(g, R"("a\u00e9\n")"));            // three code points
  EXPECT_TRUE(accepts(g, "\"\xc3\xa9\xe2\x82\xac\""));  // two code points, five bytes
  EXPECT_TRUE(accepts(g, R"("\ud83d\ude00x")"));        // a surrogate pair is one code point
  EXPECT_FALSE(accepts(g, R"("abcd")"));
  EXPECT_FALSE(accepts(g, R"("\ud83dx")"));  // a lone surrogate
  // counts above parse_gbnf's 1000 per repetition are built from blocks, exactly
  auto big = compile(json::parse(R"({"type": "string", "minLength": 1500, "maxLength": 2500})"));
  for (size_t n : {1499, 1500, 2000, 2499, 2500, 2501})
    EXPECT_EQ(accepts(big, quoted(n)), n >= 1500 && n <= 2500) << n;
  auto wide = compile(json::parse(R"({"type": "string", "maxLength": 3001})"));
  for (size_t n : {0, 999, 1000, 1001, 2999, 3000, 3001, 3002})
    EXPECT_EQ(accepts(wide, quoted(n)), n <= 3001) << n;
}

TEST(JsonSchema, Patterns) {
  auto g = compile(json::parse(R"({"type": "string", "pattern": "^[a-z]+-\\d{2,3}$"})"));
  EXPECT_TRUE(accepts(g, R"("ab-12")"));
  EXPECT_TRUE(accepts(g, R"("ab-123")"));
  EXPECT_FALSE(accepts(g, R"("ab-1234")"));
  EXPECT_FALSE(accepts(g, R"("Ab-12")"));
  // unanchored: a search
  auto u = compile(json::parse(R"({"type": "string", "pattern": "c(a|o)t"})"));
  EXPECT_TRUE(accepts(u, R"("the cat sat")"));
  EXPECT_TRUE(accepts(u, R"("cot")"));
  EXPECT_FALSE(accepts(u, R"("cut")"));
  // quotes, backslashes and controls: the pattern is on the decoded value
  auto q = compile(json::parse(R"({"type": "string", "pattern": "^\"[\\\\\\n]\\.$"})"));
  EXPECT_TRUE(accepts(q, R"("\"\\.")"));
  EXPECT_TRUE(accepts(q, R"("\"\n.")"));
  EXPECT_FALSE(accepts(q, R"("\"\t.")"));
  auto dot = compile(json::parse(R"({"type": "string", "pattern": "^.$"})"));
  EXPECT_TRUE(accepts(dot, "\"\xe2\x82\xac\""));
  EXPECT_FALSE(accepts(dot, R"("\n")"));
  EXPECT_NE(refusal(json::parse(R"j({"properties": {"a": {"pattern": "(?=x)"}}})j"))
                .find("/properties/a/pattern: keyword 'pattern' is not supported"),
            std::string::npos);
  EXPECT_NE(refusal(json::parse(R"({"pattern": "(a)\\1"})")).find("keyword 'pattern'"), std::string::npos);
}

TEST(JsonSchema, Formats) {
  auto d = compile(json::parse(R"({"type": "string", "format": "date"})"));
  EXPECT_TRUE(accepts(d, R"("2024-02-29")"));
  EXPECT_FALSE(accepts(d, R"("2023-02-29")"));
  EXPECT_FALSE(accepts(d, R"("1900-02-29")"));
  EXPECT_TRUE(accepts(d, R"("2000-02-29")"));
  EXPECT_FALSE(accepts(d, R"("2024-04-31")"));
  EXPECT_TRUE(accepts(d, R"("2024-12-31")"));
  auto dt = compile(json::parse(R"({"type": "string", "format": "date-time"})"));
  EXPECT_TRUE(accepts(dt, R"("2024-01-02T03:04:05.678+01:00")"));
  EXPECT_TRUE(accepts(dt, R"("2024-01-02t03:04:05z")"));
  EXPECT_FALSE(accepts(dt, R"("2024-01-02 03:04:05Z")"));
  EXPECT_FALSE(accepts(dt, R"("2024-01-02T24:00:00Z")"));
  auto ip = compile(json::parse(R"({"type": "string", "format": "ipv4"})"));
  EXPECT_TRUE(accepts(ip, R"("192.168.0.255")"));
  EXPECT_FALSE(accepts(ip, R"("192.168.0.256")"));
  EXPECT_FALSE(accepts(ip, R"("01.2.3.4")"));
  auto id = compile(json::parse(R"({"type": "string", "format": "uuid"})"));
  EXPECT_TRUE(accepts(id, R"("123e4567-e89b-12d3-a456-426614174000")"));
  EXPECT_FALSE(accepts(id, R"("123e4567e89b-12d3-a456-426614174000")"));
  auto em = compile(json::parse(R"({"type": "string", "format": "email"})"));
  EXPECT_TRUE(accepts(em, R"("a.b+c@example.org")"));
  EXPECT_FALSE(accepts(em, R"("a@")"));
  // without a type, format constrains strings only
  auto untyped = compile(json::parse(R"({"format": "date"})"));
  EXPECT_TRUE(accepts(untyped, "12"));
  EXPECT_FALSE(accepts(untyped, R"("2024-13-01")"));
  EXPECT_TRUE(accepts(untyped, R"("2024-12-01")"));
  // an unknown format is an annotation
  auto uri = compile(json::parse(R"({"type": "string", "format": "x-custom"})"));
  EXPECT_TRUE(accepts(uri, R"("anything")"));
}

TEST(JsonSchema, ObjectsRequiredOptionalAdditional) {
  const json s =
      json::parse(R"({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"},
                                 "c": {"type": "boolean"}}, "required": ["b"]})");
  auto g = compile(s);
  EXPECT_TRUE(accepts(g, R"({"b": "x"})"));
  EXPECT_TRUE(accepts(g, R"({"a": 1, "b": "x", "c": true})"));
  EXPECT_TRUE(accepts(g, R"({"b":"x","c":false,"zz":[1]})"));  // additional allowed by default
  EXPECT_FALSE(accepts(g, R"({"a": 1})"));                     // b missing
  EXPECT_FALSE(accepts(g, R"({"b": "x", "a": 1})"));           // listed order
  EXPECT_FALSE(accepts(g, R"({"b": "x", "b": "y"})"));         // no repeat of a listed key
  EXPECT_FALSE(accepts(g, R"({"a": "1", "b": "x"})"));
  EXPECT_TRUE(accepts(g, "{\n  \"a\": 1,\n  \"b\": \"x\"\n}"));
  SchemaOptions strict;
  strict.strict = true;
  auto st = compile(s, strict);
  EXPECT_TRUE(accepts(st, R"({"b": "x"})"));
  EXPECT_FALSE(accepts(st, R"({"b": "x", "zz": 1})"));
  auto ap = compile(json::parse(R"({"properties": {"a": {}}, "additionalProperties": {"type": "integer"}})"));
  EXPECT_TRUE(accepts(ap, R"({"a": "s", "x": 1, "y": 2})"));
  EXPECT_FALSE(accepts(ap, R"({"a": "s", "x": "1"})"));
  EXPECT_FALSE(accepts(ap, R"({"x": 1, "a": 1})"));  // a is listed: not an additional member
  auto none = compile(json::parse(R"({"type": "object", "additionalProperties": false})"));
  EXPECT_TRUE(accepts(none, "{}"));
  EXPECT_TRUE(accepts(none, "{ }"));
  EXPECT_FALSE(accepts(none, R"({"a": 1})"));
}

TEST(JsonSchema, PropertiesInTheSchemasOrder) {
  // Read from text as ordered_json: members keep the order they were written in (as OpenAI strict mode,
  // zod and pydantic expect), not nlohmann::json's sorted order.
  auto g = compile(json::parse(R"({"type": "object", "properties": {"z": {"type": "integer"},
      "a": {"type": "string"}, "m": {"type": "boolean"}}, "required": ["z", "m"],
      "additionalProperties": false})"));
  EXPECT_TRUE(accepts(g, R"({"z": 1, "a": "x", "m": true})"));
  EXPECT_TRUE(accepts(g, R"({"z": 1, "m": false})"));
  EXPECT_FALSE(accepts(g, R"({"a": "x", "m": true, "z": 1})"));  // sorted order
  EXPECT_FALSE(accepts(g, R"({"m": true, "z": 1})"));
  EXPECT_FALSE(accepts(g, R"({"z": 1, "m": true, "a": "x"})"));
  // Required keys not in properties follow the listed ones in `required`'s order.
  auto r = compile(json::parse(R"({"properties": {"y": {"type": "integer"}}, "required": ["q", "b", "y"],
      "additionalProperties": {"type": "integer"}})"));
  EXPECT_TRUE(accepts(r, R"({"y": 1, "q": 2, "b": 3})"));
  EXPECT_FALSE(accepts(r, R"({"y": 1, "b": 3, "q": 2})"));
  // allOf merges keep the first branch's order, then the second's new properties.
  auto m = compile(json::parse(R"({"allOf": [{"properties": {"s": {"type": "integer"}, "c": {}}},
      {"properties": {"k": {"type": "integer"}, "s": {"minimum": 3}}, "required": ["k", "s"]}]})"));
  EXPECT_TRUE(accepts(m, R"({"s": 3, "c": null, "k": 1})"));
  EXPECT_FALSE(accepts(m, R"({"c": null, "k": 1, "s": 3})"));
  // Value equality ignores member order: enum intersection and const against enum.
  auto e =
      compile(json::parse(R"({"allOf": [{"enum": [{"b": 1, "a": 2}, 5]}, {"enum": [{"a": 2, "b": 1}]}]})"));
  EXPECT_TRUE(accepts(e, R"({"b": 1, "a": 2})"));
  EXPECT_FALSE(accepts(e, "5"));
  auto c = compile(
      json::parse(R"({"const": {"n": [1, {"y": 0, "x": 1}]}, "enum": [{"n": [1, {"x": 1, "y": 0}]}]})"));
  EXPECT_TRUE(accepts(c, R"({"n": [1, {"x": 1, "y": 0}]})"));  // written as the enum spells it
  EXPECT_FALSE(accepts(c, R"({"n": [1, {"x": 1, "y": 1}]})"));
}

// parse_ordered_json: the order as written, nlohmann::json's values, and linear time (nlohmann's own
// ordered_json parse is quadratic in an object's size: ~30 s for 90000 keys).
TEST(JsonSchema, ParseOrderedJson) {
  const std::string text =
      R"({"z": 1, "a": [true, null, {"y": "s", "b": 2.5}], "m": {}, "a": -3, "k": "\u00e9"})";
  const json j = parse_ordered_json(text);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_EQ(j.dump(),
            "{\"z\":1,\"a\":-3,\"m\":{},\"k\":\"\u00e9\"}");  // a repeated key: first place, last value
  EXPECT_EQ(nlohmann::json::parse(j.dump()), nlohmann::json::parse(text));
  EXPECT_EQ(parse_ordered_json(R"([1, {"q": [2, {"x": {}}]}, "t"])").dump(), R"([1,{"q":[2,{"x":{}}]},"t"])");
  for (const char* bad : {"", "{", R"({"a" 1})", "[1,]", "1 2", "{\"a\":1}}"})
    EXPECT_TRUE(parse_ordered_json(bad).is_discarded()) << bad;
  std::string big = "{";
  for (int i = 0; i < 90000; ++i)
    big += (i ? ",\"k" : "\"k") + std::to_string(89999 - i) + "\":" + std::to_string(i);
  big += "}";
  const json b = parse_ordered_json(big);  // linear: ~140 ms here (nlohmann's ordered parse: ~30 s)
  ASSERT_EQ(b.size(), 90000u);
  EXPECT_EQ(b.begin().key(), "k89999");
  EXPECT_EQ(b.back(), 89999);
}

TEST(JsonSchema, EnumConstNullable) {
  auto g = compile(json::parse(R"({"enum": ["red", 2, null, {"k": [1, "x"]}], "nullable": true})"));
  EXPECT_TRUE(accepts(g, R"("red")"));
  EXPECT_TRUE(accepts(g, "2"));
  EXPECT_TRUE(accepts(g, "null"));
  EXPECT_TRUE(accepts(g, R"({ "k": [1, "x"] })"));
  EXPECT_FALSE(accepts(g, R"("blue")"));
  EXPECT_FALSE(accepts(g, "3"));
  auto c = compile(json::parse(R"({"const": "a\"b"})"));
  EXPECT_TRUE(accepts(c, R"("a\"b")"));
  EXPECT_FALSE(accepts(c, R"("ab")"));
  // enum members must satisfy their siblings
  auto f = compile(json::parse(R"({"enum": [1, 5, "x"], "type": "integer", "minimum": 2})"));
  EXPECT_FALSE(accepts(f, "1"));
  EXPECT_TRUE(accepts(f, "5"));
  EXPECT_FALSE(accepts(f, R"("x")"));
  auto n = compile(json::parse(R"({"type": "integer", "nullable": true})"));
  EXPECT_TRUE(accepts(n, "null"));
  EXPECT_TRUE(accepts(n, "7"));
}

// A big enum compiles as a prefix trie: the matcher holds about one stack per distinct next character,
// far under its bound of 4096 stacks (20000 plain alternatives went past it at the first byte, and the
// grammar then allowed nothing).
TEST(JsonSchema, BigEnumsAsPrefixTrie) {
  json strings = json::array(), ints = json::array();
  std::set<std::string> in;
  for (int i = 0; i < 20000; ++i) {
    const std::string v = (i % 3 == 0   ? "item-"
                           : i % 3 == 1 ? "it\u00e9m-"
                                        : "\u00e8") +
                          std::to_string(i * 7);
    strings.push_back(v);
    in.insert(v);
    ints.push_back(i * 3);  // 0 3 6 ... 59997: values that are prefixes of others (3, 30, 300, ...)
  }
  auto g = compile(json{{"enum", strings}});  // a prefix trie: ~70 ms with the integers below
  auto n = compile(json{{"type", "integer"}, {"enum", ints}});
  for (int i : {0, 1, 2, 3, 4, 5, 9999, 19998, 19999}) {
    const std::string v = strings[static_cast<size_t>(i)].get<std::string>();
    EXPECT_TRUE(accepts(g, json(v).dump())) << v;
    EXPECT_FALSE(accepts(g, json(v + "0").dump()) && !in.count(v + "0")) << v;
    EXPECT_TRUE(accepts(n, std::to_string(i * 3)));
    EXPECT_FALSE(accepts(n, std::to_string(i * 3 + 1)));
  }
  for (const char* bad :
       {R"("item-")", R"("item-1")", R"("it\u00e9m-0")", R"("\u00e9m-1")", R"("")", "1", R"("x")"})
    EXPECT_FALSE(accepts(g, bad)) << bad;
  EXPECT_TRUE(accepts(g, "\"it\u00e9m-7\""));  // raw UTF-8 (canonical spelling)
  EXPECT_TRUE(accepts(g,
                      "\"\u00e8"
                      "14\""));
  EXPECT_FALSE(accepts(n, "60000"));
  EXPECT_FALSE(accepts(n, "-3"));
  EXPECT_TRUE(accepts(n, "30"));
  EXPECT_TRUE(accepts(n, "300"));
  EXPECT_FALSE(accepts(n, "31"));
}

TEST(JsonSchema, ArraysItemsPrefixBounds) {
  auto g = compile(
      json::parse(R"({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3})"));
  EXPECT_FALSE(accepts(g, "[]"));
  EXPECT_TRUE(accepts(g, "[1]"));
  EXPECT_TRUE(accepts(g, "[1, 2, 3]"));
  EXPECT_FALSE(accepts(g, "[1, 2, 3, 4]"));
  EXPECT_FALSE(accepts(g, "[1, \"2\"]"));
  auto p =
      compile(json::parse(R"({"prefixItems": [{"type": "string"}, {"type": "integer"}], "items": false})"));
  EXPECT_TRUE(accepts(p, "[]"));
  EXPECT_TRUE(accepts(p, "[\"a\"]"));
  EXPECT_TRUE(accepts(p, "[\"a\", 1]"));
  EXPECT_FALSE(accepts(p, "[\"a\", 1, 2]"));
  EXPECT_FALSE(accepts(p, "[1]"));
  // draft-07 spelling: array items + additionalItems
  auto d7 = compile(
      json::parse(R"({"items": [{"const": 1}], "additionalItems": {"type": "string"}, "minItems": 2})"));
  EXPECT_FALSE(accepts(d7, "[1]"));
  EXPECT_TRUE(accepts(d7, "[1, \"a\", \"b\"]"));
  EXPECT_FALSE(accepts(d7, "[1, 2]"));
}

TEST(JsonSchema, UniqueItemsOverSmallEnums) {
  auto g = compile(json::parse(R"({"type": "array", "items": {"enum": ["a", "b", 3]}, "uniqueItems": true,
                                   "minItems": 1})"));
  EXPECT_FALSE(accepts(g, "[]"));
  EXPECT_TRUE(accepts(g, R"(["a"])"));
  EXPECT_TRUE(accepts(g, R"([3, "b", "a"])"));
  EXPECT_FALSE(accepts(g, R"(["a", "a"])"));
  EXPECT_FALSE(accepts(g, R"(["b", 3, "b"])"));
  EXPECT_FALSE(accepts(g, R"(["c"])"));
  auto b = compile(json::parse(R"({"items": {"type": "boolean"}, "uniqueItems": true, "maxItems": 5})"));
  EXPECT_TRUE(accepts(b, "[true, false]"));
  EXPECT_FALSE(accepts(b, "[false, false]"));
  EXPECT_NE(refusal(json::parse(R"({"items": {"type": "string"}, "uniqueItems": true})"))
                .find("/uniqueItems: keyword 'uniqueItems' is not supported"),
            std::string::npos);
}

TEST(JsonSchema, AnyOfOneOfAllOf) {
  auto a = compile(json::parse(R"({"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 1}]})"));
  EXPECT_TRUE(accepts(a, "3"));
  EXPECT_TRUE(accepts(a, R"("x")"));
  EXPECT_FALSE(accepts(a, R"("xy")"));
  // oneOf with provably disjoint branches (a discriminator)
  auto o = compile(json::parse(R"({"oneOf": [
      {"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "integer"}}, "required": ["kind"]},
      {"type": "object", "properties": {"kind": {"const": "b"}}, "required": ["kind"]}]})"));
  EXPECT_TRUE(accepts(o, R"({"kind": "a", "x": 1})"));
  EXPECT_TRUE(accepts(o, R"({"kind": "b"})"));
  EXPECT_FALSE(accepts(o, R"({"kind": "c"})"));
  EXPECT_NE(refusal(json::parse(R"({"oneOf": [{"type": "integer"}, {"minimum": 2}]})"))
                .find("/oneOf: keyword 'oneOf'"),
            std::string::npos);
  // allOf of objects merges
  auto m = compile(json::parse(R"({"allOf": [
      {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
      {"properties": {"a": {"minimum": 10}, "b": {"type": "string"}}, "required": ["b"]}]})"));
  EXPECT_TRUE(accepts(m, R"({"a": 10, "b": "x"})"));
  EXPECT_FALSE(accepts(m, R"({"a": 9, "b": "x"})"));
  EXPECT_FALSE(accepts(m, R"({"a": 10})"));
}

TEST(JsonSchema, RefsAndRecursion) {
  auto g = compile(json::parse(R"({
      "$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"},
                "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v"],
                "additionalProperties": false}},
      "$ref": "#/$defs/node"})"));
  EXPECT_TRUE(accepts(g, R"({"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": [{"v": 4, "kids": []}]}]})"));
  EXPECT_FALSE(accepts(g, R"({"v": 1, "kids": [{"w": 2}]})"));
  EXPECT_FALSE(accepts(g, R"({"kids": [], "v": 1})"));  // listed properties come in the schema's order
  auto d7 = compile(json::parse(R"({"definitions": {"a": {"type": "string"}},
      "properties": {"x": {"$ref": "#/definitions/a"}, "self": {"$ref": "#"}}})"));
  EXPECT_TRUE(accepts(d7, R"({"x": "s", "self": {"x": "t"}})"));
  EXPECT_FALSE(accepts(d7, R"({"self": {"x": 1}})"));
  EXPECT_NE(refusal(json::parse(R"({"$ref": "https://example.com/x.json"})")).find("/$ref: keyword '$ref'"),
            std::string::npos);
  EXPECT_NE(refusal(json::parse(R"({"$ref": "#/$defs/missing"})")).find("unresolved"), std::string::npos);
}

TEST(JsonSchema, RefusalsNameKeywordAndPointer) {
  EXPECT_EQ(refusal(json::parse(R"({"properties": {"a": {"patternProperties": {"x": {}}}}})")),
            "/properties/a/patternProperties: keyword 'patternProperties' is not supported");
  EXPECT_EQ(refusal(json::parse(R"({"items": {"multipleOf": 3.5}})"))
                .rfind("/items/multipleOf: keyword 'multipleOf' is not supported", 0),
            0u);
  EXPECT_EQ(refusal(json::parse(R"({"if": {"type": "string"}, "then": {"minLength": 1}})")),
            "/if: keyword 'if' is not supported");
  EXPECT_EQ(refusal(json::parse(R"({"uniqueItems": true})"))
                .rfind("/uniqueItems: keyword 'uniqueItems' is not supported", 0),
            0u);
  // annotations and non-vocabulary names are accepted
  EXPECT_EQ(
      json_schema_to_gbnf(json::parse(R"({"title": "t", "description": "d", "default": 1, "examples": [1],
      "$comment": "c", "deprecated": true, "readOnly": true, "x-vendor": 1, "somethingElse": 2,
      "uniqueItems": false, "type": "integer"})"))
          .ok(),
      true);
  EXPECT_NE(refusal(json::parse(R"({"type": "bogus"})")).find("/type: unknown type"), std::string::npos);
  EXPECT_NE(refusal(json::parse("3")).find("must be an object or a boolean"), std::string::npos);
}

TEST(JsonSchema, Limits) {
  json deep = {{"type", "integer"}};
  for (int i = 0; i < 80; ++i) deep = {{"type", "array"}, {"items", deep}};
  const std::string e = refusal(deep);
  EXPECT_NE(e.find("max_depth (64)"), std::string::npos) << e;
  json wide = {{"type", "object"}, {"properties", json::object()}};
  for (int i = 0; i < 400; ++i)
    wide["properties"][std::string("p").append(std::to_string(i))] = {
        {"type", "integer"}, {"minimum", i}, {"maximum", 1000 + i}};
  SchemaOptions small;
  small.max_rules = 200;
  EXPECT_NE(refusal(wide, small).find("max_rules (200"), std::string::npos);
  // the same schema within the default limits compiles
  auto g = compile(wide);
  EXPECT_TRUE(accepts(g, R"({"p0": 0, "p399": 1399})"));
  EXPECT_FALSE(accepts(g, R"({"p1": 0})"));
  // Too many properties for max_rules: refused before the members are compiled (~50 ms; it took ~11 s
  // when each rule name was probed linearly), naming where (the root is "/").
  std::string text = R"({"type": "object", "properties": {)";
  for (int i = 0; i < 12000; ++i)
    text += (i ? R"(, "q)" : R"("q)") + std::to_string(i) + R"(": {"type": "integer"})";
  text += "}}";
  const json huge = parse_ordered_json(text);
  for (const json& h : {huge, json{{"type", "array"}, {"items", huge}}}) {
    const std::string r = refusal(h);
    const std::string where = h.contains("items") ? "/items" : "/";
    EXPECT_EQ(r.rfind(where + ": schema too large: the grammar exceeds max_rules (10000", 0), 0u) << r;
  }
}

TEST(JsonSchema, BuilderSharesRulesAcrossSchemas) {
  GbnfBuilder b;
  auto x =
      b.add_schema(json::parse(R"({"type": "object", "properties": {"q": {"type": "string"}}})"), "tool-a");
  auto y = b.add_schema(json::parse(R"({"type": "integer", "minimum": 1})"), "tool-b");
  ASSERT_TRUE(x.ok());
  ASSERT_TRUE(y.ok());
  auto bad = b.add_schema(json::parse(R"({"not": {}})"), "tool-c");
  ASSERT_FALSE(bad.ok());
  auto p = parse_gbnf(b.gbnf(*x + " | " + *y));
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_TRUE(accepts(*p, R"({"q": "s"})"));
  EXPECT_TRUE(accepts(*p, "12"));
  EXPECT_FALSE(accepts(*p, "0"));
  EXPECT_EQ(GbnfBuilder::literal("a\"b\\\n"), R"("a\"b\\\n")");
}

}  // namespace
}  // namespace mixtral::grammar
