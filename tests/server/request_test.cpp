// The server's pure parts: request validation (every field honoured or refused naming it), tool grammars,
// reading replies back as text or tool calls (streamed in pieces), and the Responses API's translation.
#include "request.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "grammar/grammar.h"
#include "grammar/json_schema.h"
#include "responses.h"
#include "tools.h"

namespace mixtral::server {
namespace {

using json = nlohmann::ordered_json;

json chat_body(json extra = json::object()) {
  json b{{"model", "m"}, {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}};
  for (auto& [k, v] : extra.items()) b[k] = v;
  return b;
}

// The param of the 400 that parsing `body` answers ("" if it is accepted).
std::string chat_param(const json& body) {
  try {
    parse_chat_request(body, 4096);
  } catch (const BadRequest& e) {
    return e.param.empty() ? "<body>" : e.param;
  }
  return "";
}

const json kWeather = {
    {"type", "function"},
    {"function",
     {{"name", "get_weather"},
      {"description", "weather"},
      {"parameters",
       {{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}, {"required", {"city"}}}}}}};

TEST(RequestFields, UnknownFieldsAreRefusedByName) {
  EXPECT_EQ(chat_param(chat_body()), "");
  EXPECT_EQ(chat_param(chat_body({{"frobnicate", 1}})), "frobnicate");
  EXPECT_EQ(chat_param(chat_body({{"functions", json::array()}})), "functions");
  EXPECT_EQ(chat_param(chat_body({{"modalities", {"text"}}})), "modalities");
  // null counts as absent
  EXPECT_EQ(chat_param(chat_body({{"frobnicate", nullptr}})), "");
  // nested objects too
  EXPECT_EQ(
      chat_param(chat_body({{"stream", true}, {"stream_options", {{"include_usage", true}, {"x", 1}}}})),
      "stream_options.x");
  EXPECT_EQ(
      chat_param(chat_body({{"messages", json::array({{{"role", "user"}, {"content", "a"}, {"foo", 1}}})}})),
      "messages[0].foo");
}

TEST(RequestFields, MetadataFieldsAreAccepted) {
  EXPECT_EQ(chat_param(chat_body({{"user", "u1"},
                                  {"metadata", {{"k", "v"}}},
                                  {"store", false},
                                  {"service_tier", "auto"},
                                  {"logit_bias", json::object()}})),
            "");
  EXPECT_EQ(chat_param(chat_body({{"service_tier", "flex"}})), "service_tier");
  EXPECT_EQ(chat_param(chat_body({{"user", 5}})), "user");
}

TEST(RequestFields, LogitBiasIsParsedAndChecked) {
  const GenRequest r =
      parse_chat_request(chat_body({{"logit_bias", {{"42", 5}, {"0", -100}, {"7", 100}, {"9", 0.5}}}}), 4096);
  const std::vector<std::pair<int32_t, float>> want = {{42, 5.0f}, {0, -100.0f}, {7, 100.0f}, {9, 0.5f}};
  EXPECT_EQ(r.params.logit_bias, want);
  EXPECT_TRUE(parse_chat_request(chat_body(), 4096).params.logit_bias.empty());
  const json c{{"prompt", "x"}, {"logit_bias", {{"3", -1}}}};
  EXPECT_EQ(parse_completion_request(c, 4096).params.logit_bias,
            (std::vector<std::pair<int32_t, float>>{{3, -1.0f}}));
  for (const json& bad : {json(5), json("x"), json::array({1}), json{{"-1", 1}},  // not a token id
                          json{{"1.5", 1}},                                       // not an integer
                          json{{"abc", 1}},                                       //
                          json{{"", 1}},                                          //
                          json{{"99999999999", 1}},                               // beyond int32
                          json{{"1", 100.5}},                                     // out of [-100, 100]
                          json{{"1", -101}},                                      //
                          json{{"1", "5"}},                                       // not a number
                          json{{"1", nullptr}},                                   //
                          json{{"1", 1}, {"01", 2}}})                             // the same token twice
    EXPECT_EQ(chat_param(chat_body({{"logit_bias", bad}})), "logit_bias") << bad.dump();
  // The vocabulary's range is checked once the model is known.
  CompletionParams p;
  p.logit_bias = {{0, 1.0f}, {511, -1.0f}};
  EXPECT_NO_THROW(check_logit_bias_ids(p, 512));
  p.logit_bias.push_back({512, 1.0f});
  try {
    check_logit_bias_ids(p, 512);
    ADD_FAILURE() << "token 512 of 512 accepted";
  } catch (const BadRequest& e) {
    EXPECT_EQ(e.param, "logit_bias");
    EXPECT_NE(e.message.find("512"), std::string::npos) << e.message;
  }
}

TEST(RequestFields, ChoicesUpToEight) {
  EXPECT_EQ(parse_chat_request(chat_body({{"n", 8}}), 4096).n, 8);
  EXPECT_EQ(chat_param(chat_body({{"n", 9}})), "n");
  EXPECT_EQ(chat_param(chat_body({{"n", 0}})), "n");
  json c{{"prompt", "x"}, {"n", 3}, {"best_of", 3}};
  EXPECT_EQ(parse_completion_request(c, 4096).n, 3);
  c["best_of"] = 5;
  EXPECT_THROW(parse_completion_request(c, 4096), BadRequest);
}

TEST(RequestFields, ResponseFormat) {
  const GenRequest j = parse_chat_request(chat_body({{"response_format", {{"type", "json_object"}}}}), 4096);
  EXPECT_EQ(j.format.kind, OutputFormat::Kind::kJsonObject);
  const json schema{{"type", "object"}, {"properties", {{"a", {{"type", "integer"}}}}}};
  const GenRequest s = parse_chat_request(
      chat_body({{"response_format",
                  {{"type", "json_schema"},
                   {"json_schema", {{"name", "x"}, {"schema", schema}, {"strict", true}}}}}}),
      4096);
  EXPECT_EQ(s.format.kind, OutputFormat::Kind::kJsonSchema);
  EXPECT_TRUE(s.format.strict);
  EXPECT_EQ(s.format.schema, schema);
  EXPECT_EQ(chat_param(chat_body({{"response_format", {{"type", "xml"}}}})), "response_format.type");
  EXPECT_EQ(chat_param(chat_body(
                {{"response_format", {{"type", "json_schema"}, {"json_schema", {{"schema", schema}}}}}})),
            "response_format.json_schema.name");
  EXPECT_EQ(
      chat_param(chat_body(
          {{"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "x"}, {"schema", 5}}}}}})),
      "response_format.json_schema.schema");
  EXPECT_EQ(chat_param(chat_body({{"response_format",
                                   {{"type", "json_schema"},
                                    {"json_schema", {{"name", "x"}, {"schema", schema}, {"y", 1}}}}}})),
            "response_format.json_schema.y");
  // llama.cpp's fields
  EXPECT_EQ(parse_chat_request(chat_body({{"json_schema", schema}}), 4096).format.kind,
            OutputFormat::Kind::kJsonSchema);
  EXPECT_EQ(parse_chat_request(chat_body({{"grammar", "root ::= \"a\""}}), 4096).format.gbnf,
            "root ::= \"a\"");
  EXPECT_EQ(chat_param(chat_body({{"grammar", "root ::= \"a\""}, {"json_schema", schema}})), "grammar");
  EXPECT_EQ(chat_param(chat_body({{"grammar", 5}})), "grammar");
}

TEST(RequestFields, ToolsAndToolChoice) {
  const GenRequest r = parse_chat_request(
      chat_body({{"tools", {kWeather}},
                 {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}},
                 {"parallel_tool_calls", false}}),
      4096);
  ASSERT_EQ(r.tools.size(), 1u);
  EXPECT_EQ(r.tools[0].spec.name, "get_weather");
  EXPECT_EQ(r.tools[0].spec.description, "weather");
  EXPECT_EQ(json::parse(r.tools[0].spec.parameters), kWeather["function"]["parameters"]);
  EXPECT_EQ(r.tool_choice.kind, ToolChoice::Kind::kNamed);
  EXPECT_FALSE(r.parallel_tool_calls);
  EXPECT_EQ(
      chat_param(chat_body({{"tools", {kWeather}},
                            {"tool_choice", {{"type", "function"}, {"function", {{"name", "nope"}}}}}})),
      "tool_choice");
  EXPECT_EQ(chat_param(chat_body({{"tools", {kWeather}}, {"tool_choice", "sometimes"}})), "tool_choice");
  EXPECT_EQ(chat_param(chat_body({{"tool_choice", "required"}})), "tool_choice");
  json bad = kWeather;
  bad["function"]["name"] = "has space";
  EXPECT_EQ(chat_param(chat_body({{"tools", {bad}}})), "tools[0].function.name");
  bad = kWeather;
  bad["type"] = "code_interpreter";
  EXPECT_EQ(chat_param(chat_body({{"tools", {kWeather, bad}}})), "tools[1].type");
  EXPECT_EQ(chat_param(chat_body({{"tools", {kWeather, kWeather}}})), "tools[1]");
  // arguments are an object: parameters without a type are read as objects, another type is refused
  bad = kWeather;
  bad["function"]["parameters"] = {{"type", "string"}};
  EXPECT_EQ(chat_param(chat_body({{"tools", {bad}}})), "tools[0].function.parameters");
  bad["function"]["parameters"] = true;
  EXPECT_EQ(parse_chat_request(chat_body({{"tools", {bad}}}), 4096).tools[0].schema,
            json({{"type", "object"}}));
  bad["function"]["parameters"] = json::object();
  EXPECT_EQ(parse_chat_request(chat_body({{"tools", {bad}}}), 4096).tools[0].spec.parameters, "{}");
  EXPECT_EQ(chat_param(chat_body({{"tools", json::array({kWeather})}, {"grammar", "root ::= \"a\""}})),
            "grammar");
  json many = json::array();
  for (int i = 0; i < 129; ++i) {
    json t = kWeather;
    std::string name = "f";  // (not "f" + std::to_string(i): GCC 12's -Wrestrict false positive)
    name += std::to_string(i);
    t["function"]["name"] = name;
    many.push_back(t);
  }
  EXPECT_EQ(chat_param(chat_body({{"tools", many}})), "tools");
}

TEST(RequestFields, HistoryWithToolCalls) {
  const json msgs = json::array(
      {{{"role", "developer"}, {"content", "be brief"}},
       {{"role", "user"},
        {"content",
         json::array({{{"type", "text"}, {"text", "wea"}}, {{"type", "text"}, {"text", "ther?"}}})}},
       {{"role", "assistant"},
        {"content", nullptr},
        {"refusal", nullptr},
        {"tool_calls",
         {{{"id", "abcDEF123"},
           {"type", "function"},
           {"function", {{"name", "get_weather"}, {"arguments", "{\"city\":\"Paris\"}"}}}}}}},
       {{"role", "tool"}, {"tool_call_id", "abcDEF123"}, {"content", "sunny"}}});
  const GenRequest r = parse_chat_request(chat_body({{"messages", msgs}}), 4096);
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "wea\n\nther?");  // text parts joined as mistral-common does
  EXPECT_EQ(r.messages[2].content, "");
  ASSERT_EQ(r.messages[2].tool_calls.size(), 1u);
  EXPECT_EQ(r.messages[2].tool_calls[0].id, "abcDEF123");
  EXPECT_EQ(r.messages[2].tool_calls[0].name, "get_weather");
  EXPECT_EQ(r.messages[2].tool_calls[0].arguments, "{\"city\":\"Paris\"}");
  EXPECT_EQ(r.messages[3].role, "tool");
  EXPECT_EQ(r.messages[3].tool_call_id, "abcDEF123");

  json no_id = msgs;
  no_id[3].erase("tool_call_id");
  EXPECT_EQ(chat_param(chat_body({{"messages", no_id}})), "messages[3].tool_call_id");
  json bad_args = msgs;
  bad_args[2]["tool_calls"][0]["function"]["arguments"] = "{oops";
  EXPECT_EQ(chat_param(chat_body({{"messages", bad_args}})), "messages[2].tool_calls[0].function.arguments");
  json image = msgs;
  image[1]["content"][1] = {{"type", "image_url"}, {"image_url", {{"url", "x"}}}};
  EXPECT_EQ(chat_param(chat_body({{"messages", image}})), "messages[1].content[1].type");
  json user_no_content = msgs;
  user_no_content[1].erase("content");
  EXPECT_EQ(chat_param(chat_body({{"messages", user_no_content}})), "messages[1].content");
}

// mistral-common's normaliser (_aggregate_content_chunks, v3..v13) joins a message's text chunks with
// "\n\n" and skips empty ones; a plain string is taken as it is.
TEST(RequestFields, ContentPartsJoinedAsMistralCommon) {
  auto parts = [](std::vector<std::string> texts) {
    json a = json::array();
    for (auto& t : texts) a.push_back({{"type", "text"}, {"text", t}});
    return a;
  };
  EXPECT_EQ(content_text(parts({"a", "b", "c"}), "m"), "a\n\nb\n\nc");
  EXPECT_EQ(content_text(parts({"", "a", "", "b", ""}), "m"), "a\n\nb");
  EXPECT_EQ(content_text(parts({"only"}), "m"), "only");
  EXPECT_EQ(content_text(parts({}), "m"), "");
  EXPECT_EQ(content_text(json("a\n\nb"), "m"), "a\n\nb");
  const json in =
      json::array({{{"type", "input_text"}, {"text", "x"}}, {{"type", "output_text"}, {"text", "y"}}});
  EXPECT_EQ(content_text(in, "m", {"input_text", "output_text"}), "x\n\ny");
}

// ---- Reading replies ----

std::vector<ReplyEvent> feed_bytewise(ReplyReader& rd, const std::string& s) {
  std::vector<ReplyEvent> all;
  for (char c : s)
    for (auto& e : rd.push(std::string(1, c))) all.push_back(std::move(e));
  return all;
}

// Joins consecutive argument pieces per call: [(id, name, arguments)].
std::vector<ToolCall> calls_of(const std::vector<ReplyEvent>& evs, std::string* text = nullptr) {
  std::vector<ToolCall> calls;
  for (const auto& e : evs) {
    if (e.kind == ReplyEvent::Kind::kCallStart) {
      EXPECT_EQ(e.index, static_cast<int>(calls.size()));
      calls.push_back({e.id, e.name, ""});
    } else if (e.kind == ReplyEvent::Kind::kCallArgs) {
      EXPECT_EQ(e.index + 1, static_cast<int>(calls.size()));
      calls.back().arguments += e.text;
    } else if (text) {
      *text += e.text;
    }
  }
  return calls;
}

std::function<std::string()> counter_ids() {
  auto n = std::make_shared<int>(0);
  return [n] { return "id" + std::to_string((*n)++) + "abcdefg"; };
}

TEST(ReplyReader, GenericCallsStreamedInPieces) {
  ReplyReader rd(ToolFormat::kGeneric, true, counter_ids());
  const std::string reply =
      R"({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Pa\"ris}", "n": [1, {"x": 2}]}}, )"
      R"({"name": "f\u0032", "arguments": {}}]})";
  const auto evs = feed_bytewise(rd, reply);
  std::string text;
  const auto calls = calls_of(evs, &text);
  EXPECT_EQ(text, "");
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].name, "get_weather");
  EXPECT_EQ(calls[0].arguments, R"({"city": "Pa\"ris}", "n": [1, {"x": 2}]})");
  EXPECT_EQ(calls[0].id, "id0abcdefg");
  EXPECT_EQ(calls[1].name, "f2");
  EXPECT_EQ(calls[1].arguments, "{}");
  const auto f = rd.finish();
  EXPECT_TRUE(f.calls_complete);
  EXPECT_FALSE(f.content.has_value());
  ASSERT_EQ(f.calls.size(), 2u);
  EXPECT_EQ(f.calls[0].arguments, calls[0].arguments);
  EXPECT_EQ(f.calls[1].id, "id1abcdefg");
  // the same reply in one piece gives the same calls
  ReplyReader whole(ToolFormat::kGeneric, true, counter_ids());
  const auto calls2 = calls_of(whole.push(reply));
  ASSERT_EQ(calls2.size(), 2u);
  EXPECT_EQ(calls2[0].arguments, calls[0].arguments);
}

TEST(ReplyReader, LeadingWhiteSpaceIsHeldUntilTheFormIsKnown) {
  ReplyReader calls(ToolFormat::kGeneric, true, counter_ids());
  EXPECT_TRUE(calls.push(" ").empty());
  EXPECT_TRUE(calls.push("\n").empty());
  const auto c = calls_of(feed_bytewise(calls, R"({"tool_calls": [{"name": "a", "arguments": {}}]})"));
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].arguments, "{}");
  EXPECT_TRUE(calls.finish().calls_complete);
  ReplyReader text(ToolFormat::kGeneric, true, counter_ids());
  EXPECT_TRUE(text.push("  ").empty());
  std::string t;
  calls_of(text.push("Hi"), &t);
  EXPECT_EQ(t, "  Hi");
  ReplyReader blank(ToolFormat::kGeneric, true, counter_ids());
  EXPECT_TRUE(blank.push(" ").empty());
  const auto f = blank.flush();
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].text, " ");
  EXPECT_EQ(blank.finish().content.value_or("<null>"), " ");
}

TEST(ReplyReader, GenericTextPassesThrough) {
  ReplyReader rd(ToolFormat::kGeneric, true, counter_ids());
  EXPECT_TRUE(rd.push("").empty());  // nothing known yet
  std::string text;
  calls_of(feed_bytewise(rd, "It is {sunny}."), &text);
  EXPECT_EQ(text, "It is {sunny}.");
  EXPECT_EQ(rd.finish().content.value_or("<null>"), "It is {sunny}.");
  EXPECT_TRUE(rd.finish().calls.empty());
}

TEST(ReplyReader, V3CallsAfterTheControlToken) {
  ReplyReader rd(ToolFormat::kV3, true, counter_ids());
  rd.push_tool_calls_token();
  EXPECT_TRUE(rd.in_calls());
  const auto calls = calls_of(feed_bytewise(rd, R"( [{"name": "a", "arguments": {"q": "[x]"}}])"));
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].name, "a");
  EXPECT_EQ(calls[0].arguments, R"({"q": "[x]"})");
  EXPECT_TRUE(rd.finish().calls_complete);
  // v3 text may begin with "{": only the control token makes calls
  ReplyReader text(ToolFormat::kV3, true, counter_ids());
  std::string t;
  calls_of(text.push("{not a call}"), &t);
  EXPECT_EQ(t, "{not a call}");
}

TEST(ReplyReader, CutShortCallsAreNeverText) {
  ReplyReader rd(ToolFormat::kGeneric, true, counter_ids());
  const std::string cut =
      R"({"tool_calls": [{"name": "a", "arguments": {"q": 1}}, {"name": "b", "arguments": {"q": "abc)";
  rd.push(cut);
  const auto f = rd.finish();
  EXPECT_FALSE(f.calls_complete);
  EXPECT_FALSE(f.content.has_value());
  ASSERT_EQ(f.calls.size(), 1u);  // the whole one only
  EXPECT_EQ(f.calls[0].name, "a");
  EXPECT_EQ(f.calls[0].arguments, R"({"q": 1})");
  ReplyReader early(ToolFormat::kGeneric, true, counter_ids());
  early.push(R"({"tool)");
  EXPECT_FALSE(early.finish().content.has_value());
  EXPECT_TRUE(early.finish().calls.empty());
}

TEST(ReplyReader, WithoutToolsEverythingIsText) {
  ReplyReader rd(ToolFormat::kGeneric, false, counter_ids());
  std::string t;
  calls_of(rd.push(R"({"tool_calls": []})"), &t);
  EXPECT_EQ(t, R"({"tool_calls": []})");
}

TEST(ToolCallIds, NineAlphanumerics) {
  for (int i = 0; i < 50; ++i) {
    const std::string id = make_call_id();
    ASSERT_EQ(id.size(), 9u);
    for (char c : id) EXPECT_TRUE(std::isalnum(static_cast<unsigned char>(c))) << id;
  }
  EXPECT_NE(make_call_id(), make_call_id());
}

// ---- Grammars ----

grammar::GrammarPtr compile(const GrammarPlan& plan, int32_t tool_calls_id = 5) {
  grammar::GbnfOptions go;
  go.token_id = [tool_calls_id](std::string_view p) { return p == "[TOOL_CALLS]" ? tool_calls_id : -1; };
  auto g = grammar::parse_gbnf(plan.gbnf, go);
  EXPECT_TRUE(g.ok()) << (g ? "" : g.error().message) << "\n" << plan.gbnf;
  return g ? *g : nullptr;
}

bool accepts(const grammar::GrammarPtr& g, const std::string& s, int32_t token = -1) {
  grammar::Matcher m(g);
  if (token >= 0 && !m.advance_special(token)) return false;
  return m.advance_bytes(s) && m.can_end();
}

TEST(ToolGrammar, GenericAutoRequiredNamed) {
  json second = kWeather;
  second["function"]["name"] = "get_time";
  second["function"]["parameters"] = {{"type", "object"}, {"properties", json::object()}};
  GenRequest r = parse_chat_request(chat_body({{"tools", {kWeather, second}}}), 4096);
  GrammarPlan plan = build_grammar(r, ToolFormat::kGeneric);
  EXPECT_TRUE(plan.calls_possible);
  EXPECT_TRUE(plan.text_possible);
  auto g = compile(plan);
  ASSERT_TRUE(g);
  const std::string call = R"({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]})";
  const std::string two = R"({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, )"
                          R"({"name": "get_time", "arguments": {}}]})";
  EXPECT_TRUE(accepts(g, call));
  EXPECT_TRUE(accepts(g, two));
  EXPECT_TRUE(accepts(g, "Hello there"));
  EXPECT_TRUE(accepts(g, ""));
  EXPECT_FALSE(accepts(g, "{\"a\": 1}"));  // text may not look like the calls
  EXPECT_FALSE(accepts(g, R"({"tool_calls": [{"name": "nope", "arguments": {}}]})"));
  EXPECT_FALSE(accepts(g, R"({"tool_calls": [{"name": "get_weather", "arguments": {}}]})"));  // city required

  r = parse_chat_request(
      chat_body({{"tools", {kWeather, second}}, {"tool_choice", "required"}, {"parallel_tool_calls", false}}),
      4096);
  plan = build_grammar(r, ToolFormat::kGeneric);
  EXPECT_FALSE(plan.text_possible);
  g = compile(plan);
  EXPECT_TRUE(accepts(g, call));
  EXPECT_FALSE(accepts(g, two));  // one call only
  EXPECT_FALSE(accepts(g, "Hello"));

  r = parse_chat_request(
      chat_body({{"tools", {kWeather, second}},
                 {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_time"}}}}}}),
      4096);
  g = compile(build_grammar(r, ToolFormat::kGeneric));
  EXPECT_FALSE(accepts(g, call));
  EXPECT_TRUE(accepts(g, R"({"tool_calls": [{"name": "get_time", "arguments": {}}]})"));

  r = parse_chat_request(chat_body({{"tools", {kWeather}}, {"tool_choice", "none"}}), 4096);
  EXPECT_TRUE(build_grammar(r, ToolFormat::kGeneric).gbnf.empty());  // free text
}

TEST(ToolGrammar, V3ControlToken) {
  GenRequest r = parse_chat_request(chat_body({{"tools", {kWeather}}}), 4096);
  auto g = compile(build_grammar(r, ToolFormat::kV3), 7);
  ASSERT_TRUE(g);
  const std::string calls = R"( [{"name": "get_weather", "arguments": {"city": "Oslo"}}])";
  EXPECT_TRUE(accepts(g, calls, 7));
  EXPECT_FALSE(accepts(g, calls.substr(0, calls.size() - 1), 7));
  EXPECT_TRUE(accepts(g, "{free text is fine in v3}"));
  EXPECT_FALSE(accepts(g, "x", 7));
}

TEST(ToolGrammar, SchemaErrorsNameTheField) {
  json bad = kWeather;
  bad["function"]["name"] = "other";
  bad["function"]["parameters"] = {{"type", "object"}, {"patternProperties", {{"^a", {{"type", "string"}}}}}};
  GenRequest r = parse_chat_request(chat_body({{"tools", {kWeather, bad}}}), 4096);
  try {
    build_grammar(r, ToolFormat::kGeneric);
    FAIL() << "accepted an unsupported keyword";
  } catch (const BadRequest& e) {
    EXPECT_EQ(e.param, "tools[1].function.parameters");
    EXPECT_NE(e.message.find("patternProperties"), std::string::npos) << e.message;
  }
  r = parse_chat_request(chat_body({{"response_format", {{"type", "json_object"}}}, {"tools", {kWeather}}}),
                         4096);
  EXPECT_THROW(build_grammar(r, ToolFormat::kGeneric), BadRequest);  // ambiguous with the generic layout
  EXPECT_NO_THROW(build_grammar(r, ToolFormat::kV3));
}

TEST(ToolGrammar, JsonFormats) {
  GenRequest r = parse_chat_request(chat_body({{"response_format", {{"type", "json_object"}}}}), 4096);
  auto g = compile(build_grammar(r, ToolFormat::kGeneric));
  ASSERT_TRUE(g);
  EXPECT_TRUE(accepts(g, R"({"a": [1, 2]})"));
  EXPECT_FALSE(accepts(g, "[1]"));
  r = parse_chat_request(
      chat_body(
          {{"json_schema",
            {{"type", "object"}, {"properties", {{"n", {{"type", "integer"}}}}}, {"required", {"n"}}}}}),
      4096);
  g = compile(build_grammar(r, ToolFormat::kGeneric));
  ASSERT_TRUE(g);
  EXPECT_TRUE(accepts(g, R"({"n": 3})"));
  EXPECT_FALSE(accepts(g, R"({"n": "3"})"));
}

// Key order survives from the wire (bodies are read with parse_ordered_json, as the server does): tool
// parameters reach the prompt as written (mistral-common's json.dumps keeps a dict's order), and schemas
// make the model write properties in the schema's order (z, a, m here; nlohmann::json would sort them).
TEST(ToolGrammar, PropertyOrderFromTheWire) {
  const std::string params =
      R"({"type":"object","properties":{"z":{"type":"integer"},"a":{"type":"string"},)"
      R"("m":{"type":"boolean"}},"required":["z","a","m"],"additionalProperties":false})";
  const json body = mixtral::parse_ordered_json(
      R"({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function",)"
      R"( "function": {"name": "f", "parameters": )" +
      params +
      R"(}}], "tool_choice": "required", "response_format": {"type": "json_schema", "json_schema":)"
      R"( {"name": "s", "schema": )" +
      params + "}}}");
  ASSERT_FALSE(body.is_discarded());
  GenRequest r = parse_chat_request(body, 4096);
  ASSERT_EQ(r.tools.size(), 1u);
  EXPECT_EQ(r.tools[0].spec.parameters, params);  // byte for byte
  auto g = compile(build_grammar(r, ToolFormat::kGeneric));
  ASSERT_TRUE(g);
  EXPECT_TRUE(accepts(g, R"({"tool_calls": [{"name": "f", "arguments": {"z": 1, "a": "x", "m": true}}]})"));
  EXPECT_FALSE(accepts(g, R"({"tool_calls": [{"name": "f", "arguments": {"a": "x", "m": true, "z": 1}}]})"));
  r.tools.clear();
  r.tool_choice = {};
  g = compile(build_grammar(r, ToolFormat::kGeneric));
  ASSERT_TRUE(g);
  EXPECT_TRUE(accepts(g, R"({"z": 1, "a": "x", "m": true})"));
  EXPECT_FALSE(accepts(g, R"({"a": "x", "m": true, "z": 1})"));
}

// ---- The Responses API ----

TEST(Responses, InputItemsBecomeMessages) {
  const json input =
      json::array({{{"role", "user"}, {"content", "weather in Paris?"}},
                   {{"type", "message"},
                    {"role", "assistant"},
                    {"content", {{{"type", "output_text"}, {"text", "Let me look."}}}}},
                   {{"type", "function_call"},
                    {"call_id", "c1"},
                    {"name", "get_weather"},
                    {"arguments", "{\"city\":\"Paris\"}"}},
                   {{"type", "function_call"}, {"call_id", "c2"}, {"name", "get_time"}, {"arguments", "{}"}},
                   {{"type", "function_call_output"}, {"call_id", "c1"}, {"output", "sunny"}},
                   {{"type", "function_call_output"}, {"call_id", "c2"}, {"output", "noon"}},
                   {{"role", "developer"}, {"content", {{{"type", "input_text"}, {"text", "short"}}}}}});
  const auto m = responses_messages(input, "be kind");
  ASSERT_EQ(m.size(), 6u);
  EXPECT_EQ(m[0].role, "system");
  EXPECT_EQ(m[0].content, "be kind");
  EXPECT_EQ(m[1].role, "user");
  EXPECT_EQ(m[2].role, "assistant");
  EXPECT_EQ(m[2].content, "Let me look.");
  ASSERT_EQ(m[2].tool_calls.size(), 2u);
  EXPECT_EQ(m[2].tool_calls[1].id, "c2");
  EXPECT_EQ(m[3].role, "tool");
  EXPECT_EQ(m[3].tool_call_id, "c1");
  EXPECT_EQ(m[4].content, "noon");
  EXPECT_EQ(m[5].role, "system");

  auto param = [](const json& in) {
    try {
      responses_messages(in, "");
    } catch (const BadRequest& e) {
      return e.param;
    }
    return std::string();
  };
  EXPECT_EQ(param(json::array({{{"type", "function_call_output"}, {"output", "x"}}})), "input[0].call_id");
  EXPECT_EQ(param(json::array({{{"type", "reasoning"}, {"summary", json::array()}}})), "input[0].type");
  EXPECT_EQ(
      param(json::array({{{"role", "user"}, {"content", {{{"type", "input_image"}, {"image_url", "x"}}}}}})),
      "input[0].content[0].type");
}

std::string responses_param(const json& b) {
  try {
    parse_responses_request(b, 4096);
  } catch (const BadRequest& e) {
    return e.param;
  }
  return "";
}

TEST(Responses, FieldsHonouredOrRefused) {
  const json base{{"model", "m"}, {"input", "hi"}};
  EXPECT_EQ(responses_param(base), "");
  json b = base;
  b["store"] = true;
  b["max_output_tokens"] = 20;
  b["text"] = {
      {"format",
       {{"type", "json_schema"}, {"name", "x"}, {"schema", {{"type", "object"}}}, {"strict", true}}}};
  b["tools"] = {{{"type", "function"}, {"name", "f"}, {"parameters", {{"type", "object"}}}}};
  b["tool_choice"] = {{"type", "function"}, {"name", "f"}};
  const ResponsesRequest rr = parse_responses_request(b, 4096);
  EXPECT_EQ(rr.gen.format.kind, OutputFormat::Kind::kJsonSchema);
  EXPECT_TRUE(rr.gen.tools[0].strict);  // the Responses API's default
  EXPECT_EQ(*rr.gen.max_tokens, 20);
  EXPECT_EQ(rr.gen.tool_choice.kind, ToolChoice::Kind::kNamed);
  EXPECT_EQ(rr.echo["store"], false);  // accepted, but nothing is stored
  EXPECT_EQ(responses_param({{"input", "x"},
                             {"text", json::object()},
                             {"tools", {{{"type", "function"}, {"name", "f"}, {"strict", nullptr}}}}}),
            "");
  EXPECT_EQ(responses_param({{"input", "x"}, {"previous_response_id", "resp_1"}}), "previous_response_id");
  EXPECT_EQ(responses_param({{"input", "x"}, {"tools", {{{"type", "web_search"}}}}}), "tools[0].type");
  EXPECT_EQ(responses_param({{"input", "x"}, {"tool_choice", {{"type", "function"}, {"name", "g"}}}}),
            "tool_choice");
  EXPECT_EQ(responses_param({{"input", "x"}, {"reasoning", {{"effort", "low"}}}}), "reasoning");
  EXPECT_EQ(responses_param({{"input", "x"}, {"wat", 1}}), "wat");
  // OpenAI's Responses API has no logit_bias (chat and completions do).
  EXPECT_EQ(responses_param({{"input", "x"}, {"logit_bias", {{"1", 5}}}}), "logit_bias");
  EXPECT_EQ(responses_param({{"input", "x"}, {"text", {{"format", {{"type", "yaml"}}}}}}),
            "text.format.type");
}

TEST(Responses, StreamEventsInOrder) {
  const ResponsesRequest rr = parse_responses_request({{"input", "hi"}}, 4096);
  ResponseBuilder rb(rr, "resp_1", 100, "m");
  std::vector<json> evs = rb.start();
  auto add = [&](std::vector<json> more) {
    for (auto& e : more) evs.push_back(std::move(e));
  };
  add(rb.on({ReplyEvent::Kind::kText, 0, "Hel", "", ""}));
  add(rb.on({ReplyEvent::Kind::kText, 0, "lo", "", ""}));
  add(rb.on({ReplyEvent::Kind::kCallStart, 0, "", "abcdefghi", "f"}));
  add(rb.on({ReplyEvent::Kind::kCallArgs, 0, "{\"a\":", "", ""}));
  add(rb.on({ReplyEvent::Kind::kCallArgs, 0, " 1}", "", ""}));
  add(rb.finish("tool_calls", ResponseUsage{10, 2, 5}));
  std::vector<std::string> types;
  for (size_t i = 0; i < evs.size(); ++i) {
    EXPECT_EQ(evs[i]["sequence_number"], i);
    types.push_back(evs[i]["type"]);
  }
  const std::vector<std::string> want = {"response.created",
                                         "response.in_progress",
                                         "response.output_item.added",
                                         "response.content_part.added",
                                         "response.output_text.delta",
                                         "response.output_text.delta",
                                         "response.output_text.done",
                                         "response.content_part.done",
                                         "response.output_item.done",
                                         "response.output_item.added",
                                         "response.function_call_arguments.delta",
                                         "response.function_call_arguments.delta",
                                         "response.function_call_arguments.done",
                                         "response.output_item.done",
                                         "response.completed"};
  EXPECT_EQ(types, want);
  const json& done = evs.back()["response"];
  EXPECT_EQ(done["status"], "completed");
  ASSERT_EQ(done["output"].size(), 2u);
  EXPECT_EQ(done["output"][0]["content"][0]["text"], "Hello");
  EXPECT_EQ(done["output"][1]["call_id"], "abcdefghi");
  EXPECT_EQ(done["output"][1]["arguments"], "{\"a\": 1}");
  EXPECT_EQ(done["usage"]["total_tokens"], 15);
  EXPECT_EQ(done["usage"]["input_tokens_details"]["cached_tokens"], 2);
  EXPECT_EQ(evs[12]["arguments"], "{\"a\": 1}");
}

TEST(Responses, CutShortIsIncomplete) {
  const ResponsesRequest rr = parse_responses_request({{"input", "hi"}, {"max_output_tokens", 3}}, 4096);
  ResponseBuilder rb(rr, "resp_1", 100, "m");
  rb.start();
  rb.on({ReplyEvent::Kind::kText, 0, "abc", "", ""});
  const auto evs = rb.finish("length", ResponseUsage{4, 0, 3});
  EXPECT_EQ(evs.back()["type"], "response.incomplete");
  EXPECT_EQ(evs.back()["response"]["incomplete_details"]["reason"], "max_output_tokens");
}

// A failed generation (a grammar that allowed no token) ends the stream with `error`, then
// response.failed: the open text item is closed first, sequence numbers continue.
TEST(Responses, FailedEndsWithErrorThenFailed) {
  const ResponsesRequest rr = parse_responses_request({{"input", "hi"}}, 4096);
  ResponseBuilder rb(rr, "resp_1", 100, "m");
  const auto start = rb.start();
  rb.on({ReplyEvent::Kind::kText, 0, "ab", "", ""});
  const auto evs = rb.fail("grammar_error", "no token");
  ASSERT_GE(evs.size(), 3u);
  EXPECT_EQ(evs[evs.size() - 2]["type"], "error");
  EXPECT_EQ(evs[evs.size() - 2]["code"], "grammar_error");
  EXPECT_EQ(evs[evs.size() - 2]["message"], "no token");
  EXPECT_EQ(evs.back()["type"], "response.failed");
  EXPECT_EQ(evs.back()["response"]["status"], "failed");
  EXPECT_EQ(evs.back()["response"]["error"]["code"], "grammar_error");
  EXPECT_EQ(evs.back()["sequence_number"].get<int>(), evs[evs.size() - 2]["sequence_number"].get<int>() + 1);
  EXPECT_EQ(evs.front()["type"], "response.output_text.done");  // the open item closed first
}

}  // namespace
}  // namespace mixtral::server
