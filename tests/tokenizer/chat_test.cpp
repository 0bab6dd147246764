// Chat prompts as mistral-common builds them (validator.py, normalize.py, InstructTokenizerV1/V3 in
// tokens/tokenizers/instruct.py), checked on prompt ids. Expected ids are built independently: Debian's
// SentencePiece library encodes each text segment (mistral-common encodes segment by segment, each with
// its dummy prefix) and control tokens are written as Mistral's v3 ids (the fixture vocabulary is the real
// v3 piece list: 1 <s>, 2 </s>, 3 [INST], 4 [/INST], 5 [TOOL_CALLS], 6 [AVAILABLE_TOOLS],
// 7 [/AVAILABLE_TOOLS], 8 [TOOL_RESULTS], 9 [/TOOL_RESULTS]). JSON segments are written out as the exact
// text Python's json.dumps(..., ensure_ascii=False) produces.
#include <gtest/gtest.h>
#include <sentencepiece_processor.h>

#include <string>
#include <vector>

#include "mixtral/tokenizer.h"

#ifndef MIXTRAL_TOK_FIXTURES
#error "MIXTRAL_TOK_FIXTURES must name the directory make_fixtures.py writes"
#endif

namespace mixtral {
namespace {

const std::string kFixtures = MIXTRAL_TOK_FIXTURES;
const std::string kV1Model = kFixtures + "/v1/tokenizer.model";
const std::string kV3Model = kFixtures + "/v3/tokenizer.model.v3";

constexpr int32_t kBos = 1, kEos = 2, kInst = 3, kEndInst = 4, kToolCalls = 5, kTools = 6, kEndTools = 7,
                  kResults = 8, kEndResults = 9;

using Ids = std::vector<int32_t>;
using Msgs = std::vector<ChatMessage>;

// A piece of an expected prompt: control ids, or text encoded by the reference library.
struct Seg {
  Ids ids;
  std::string text;
  bool is_text = false;
  Seg(std::initializer_list<int32_t> i) : ids(i) {}
  Seg(const char* t) : text(t), is_text(true) {}
  Seg(std::string t) : text(std::move(t)), is_text(true) {}
};

class Chat : public ::testing::Test {
 protected:
  void SetUp() override {
    for (auto [path, tok, sp] : {std::tuple{&kV1Model, &v1_, &sp1_}, std::tuple{&kV3Model, &v3_, &sp3_}}) {
      auto t = Tokenizer::load(*path);
      ASSERT_TRUE(t.ok()) << t.error().message << " (fixtures: tools/tokenizer/make_fixtures.py)";
      *tok = std::move(t).value();
      ASSERT_TRUE(sp->Load(*path).ok()) << *path;
    }
    ASSERT_TRUE(v3_->has_tool_tokens());
    ASSERT_FALSE(v1_->has_tool_tokens());
  }
  Ids expect(const sentencepiece::SentencePieceProcessor& sp, std::initializer_list<Seg> segs) const {
    Ids out;
    for (const Seg& s : segs) {
      if (!s.is_text) {
        out.insert(out.end(), s.ids.begin(), s.ids.end());
        continue;
      }
      std::vector<int> ids;
      EXPECT_TRUE(sp.Encode(s.text, &ids).ok());
      out.insert(out.end(), ids.begin(), ids.end());
    }
    return out;
  }
  Ids e1(std::initializer_list<Seg> segs) const { return expect(sp1_, segs); }
  Ids e3(std::initializer_list<Seg> segs) const { return expect(sp3_, segs); }
  static Ids ok(Result<Ids> r) {
    EXPECT_TRUE(r.ok()) << r.error().message;
    return r.ok() ? *r : Ids{};
  }
  Ids c1(const Msgs& m, const ChatOptions& o = {}) const {
    return ok(v1_->apply_chat(m, ChatFormat::kMistralV1, o));
  }
  Ids c3(const Msgs& m, const ChatOptions& o = {}) const {
    return ok(v3_->apply_chat(m, ChatFormat::kMistralV3, o));
  }
  // The error of a refused conversation (both formats refuse it) must name `where`.
  void refused(const Msgs& m, const std::string& where, const ChatOptions& o = {}) const {
    for (const Tokenizer* t : {v1_.get(), v3_.get()}) {
      auto f = t == v1_.get() ? ChatFormat::kMistralV1 : ChatFormat::kMistralV3;
      auto r = t->apply_chat(m, f, o);
      ASSERT_FALSE(r.ok()) << chat_format_name(f) << " accepted it";
      EXPECT_NE(r.error().message.find(where), std::string::npos) << r.error().message;
    }
  }
  std::unique_ptr<Tokenizer> v1_, v3_;
  sentencepiece::SentencePieceProcessor sp1_, sp3_;
};

ChatMessage msg(std::string role, std::string content) {
  return {std::move(role), std::move(content), {}, {}, {}};
}
ChatMessage calls(std::vector<ToolCall> c, std::string content = "") {
  return {"assistant", std::move(content), std::move(c), {}, {}};
}
ChatMessage result(std::string id, std::string content, std::string name = "") {
  return {"tool", std::move(content), {}, std::move(id), std::move(name)};
}

// test_tokenize_v3.py::test_continue_final_message asserts these exact ids for the real v3 tokenizer
// (system_prompt "SYSTEM", a/b/c/d, continue_final_message=True): the system prompt joins the last user
// message with "\n\n" and the continued answer has no </s>.
TEST_F(Chat, V3ContinueFinalMessageIdsFromMistralCommon) {
  const Msgs m = {msg("system", "SYSTEM"), msg("user", "a"), msg("assistant", "b"), msg("user", "c"),
                  msg("assistant", "d")};
  EXPECT_EQ(c3(m), (Ids{1, 3, 1032, 4, 1055, 2, 3, 17889, 23294, 781, 781, 29485, 4, 1049}));
}

// test_tokenize_v3.py::test_tools_singleturn: "<s>[AVAILABLE_TOOLS]▁[{"type": "function", "function":
// {"name": "tool1", "description": "1", "parameters": {}}}][/AVAILABLE_TOOLS][INST]▁a[/INST]", and the
// ids outside the tool block are [1, 3, 1032, 4].
TEST_F(Chat, V3AvailableToolsSingleTurn) {
  ChatOptions o;
  o.tools = {{"tool1", "1", "{}"}};
  const Ids got = c3({msg("user", "a")}, o);
  EXPECT_EQ(
      got,
      e3({{kBos, kTools},
          R"([{"type": "function", "function": {"name": "tool1", "description": "1", "parameters": {}}}])",
          {kEndTools, kInst},
          "a",
          {kEndInst}}));
  Ids outside;
  bool in = false;
  for (int32_t id : got) {
    if (id == kTools) in = true;
    if (!in) outside.push_back(id);
    if (id == kEndTools) in = false;
  }
  EXPECT_EQ(outside, (Ids{1, 3, 1032, 4}));
}

// test_tokenize_v3.py::test_tools_multiturn / test_system_tools_multiturn: the tools go before the LAST
// user message, the system prompt joins the last user message; the ids outside the tool block are
// [1, 3, 1032, 4, 1055] + [2, 3, 1045, 4, 1049, 2] ("b</s>" comes before the block; here "d" is continued:
// no final </s>).
TEST_F(Chat, V3ToolsBeforeLastUserMessage) {
  ChatOptions o;
  o.tools = {{"tool1", "1", "{}"}, {"tool2", "2", "{}"}};
  const std::string tools_json =
      R"([{"type": "function", "function": {"name": "tool1", "description": "1", "parameters": {}}}, )"
      R"({"type": "function", "function": {"name": "tool2", "description": "2", "parameters": {}}}])";
  const Msgs m = {msg("user", "a"), msg("assistant", "b"), msg("user", "c"), msg("assistant", "d")};
  EXPECT_EQ(c3(m, o), e3({{1, 3, 1032, 4, 1055, 2, kTools}, tools_json, {kEndTools, 3, 1045, 4, 1049}}));
  // With a system prompt: "[INST]▁SYSTEM<0x0A><0x0A>c[/INST]" after the tools.
  Msgs ms = {msg("system", "SYSTEM"), msg("user", "a"), msg("assistant", "b"), msg("user", "c")};
  o.tools.resize(1);
  EXPECT_EQ(c3(ms, o), e3({{kBos, kInst},
                           "a",
                           {kEndInst},
                           "b",
                           {kEos, kTools},
                           R"([{"type": "function", "function": {"name": "tool1", "description": "1", )"
                           R"("parameters": {}}}])",
                           {kEndTools, kInst},
                           "SYSTEM\n\nc",
                           {kEndInst}}));
}

// test_tokenize_v3.py::test_tool_message: '<s>[INST]▁a[/INST][TOOL_CALLS]▁[{"name":▁"b",▁"arguments":▁{},▁
// "id":▁"123456789"}]</s>[TOOL_RESULTS]▁{"content":▁"d",▁"call_id":▁"123456789"}[/TOOL_RESULTS]'; a JSON
// result is embedded as JSON ({"content": {"a": 1}, ...}); content null beside tool_calls is fine.
TEST_F(Chat, V3ToolCallAndResultLayout) {
  const Msgs m = {msg("user", "a"), calls({{"123456789", "b", "{}"}}), result("123456789", "d", "b")};
  EXPECT_EQ(c3(m), e3({{kBos, kInst},
                       "a",
                       {kEndInst, kToolCalls},
                       R"([{"name": "b", "arguments": {}, "id": "123456789"}])",
                       {kEos, kResults},
                       R"({"content": "d", "call_id": "123456789"})",
                       {kEndResults}}));
  const Msgs j = {msg("user", "a"), calls({{"123456789", "b", "{}"}}),
                  result("123456789", R"({"a": 1})", "b")};
  EXPECT_EQ(c3(j), e3({{kBos, kInst},
                       "a",
                       {kEndInst, kToolCalls},
                       R"([{"name": "b", "arguments": {}, "id": "123456789"}])",
                       {kEos, kResults},
                       R"({"content": {"a": 1}, "call_id": "123456789"})",
                       {kEndResults}}));
  // Empty arguments and empty results read as {} (normalize.py _normalize_json_content); a call without
  // an id (ToolCall's default "null") has no "id" key (InstructTokenizerV3._prepare_function_call); text
  // that is not JSON stays a string; several tool messages stay one [TOOL_RESULTS] block each.
  const Msgs e = {msg("user", "a"),
                  calls({{"", "f", ""}, {"abcDEF123", "g", "{\"k\": [1, 2.50, \"é\\n\"]}"}}),
                  result("aaaaaaaaa", ""), result("abcDEF123", "not json {")};
  EXPECT_EQ(c3(e),
            e3({{kBos, kInst},
                "a",
                {kEndInst, kToolCalls},
                R"([{"name": "f", "arguments": {}}, {"name": "g", "arguments": {"k": [1, 2.5, "é\n"]}, )"
                R"("id": "abcDEF123"}])",
                {kEos, kResults},
                R"({"content": {}, "call_id": "aaaaaaaaa"})",
                {kEndResults, kResults},
                R"({"content": "not json {", "call_id": "abcDEF123"})",
                {kEndResults}}));
}

// A tool-call round trip: user -> assistant call -> tool result -> assistant answer -> user, with tools and a
// system prompt; InstructTokenizerV3 encodes the call history in full (encode_assistant_message passes
// is_before_last_user_message=False), the tools and the system prompt go with the last user message.
TEST_F(Chat, V3ToolRoundTrip) {
  ChatOptions o;
  o.tools = {{"get_weather", "Weather of a city",
              R"({"type":"object","properties":{"city":{"type":"string"},"unit":{"enum":["c","f"]}},)"
              R"("required":["city"]})"}};
  const Msgs m = {msg("system", "You are helpful."),
                  msg("user", "Weather in Paris?"),
                  calls({{"Ab3dE6gH9", "get_weather", R"({"city":"Paris","unit":"c"})"}}),
                  result("Ab3dE6gH9", R"({"temp": 21.5, "sky": "clear"})", "get_weather"),
                  msg("assistant", "It is 21.5 °C and clear in Paris.  "),
                  msg("user", "Thanks! And in Tokyo?")};
  EXPECT_EQ(
      c3(m, o),
      e3({{kBos, kInst},
          "Weather in Paris?",
          {kEndInst, kToolCalls},
          R"([{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}, "id": "Ab3dE6gH9"}])",
          {kEos, kResults},
          R"({"content": {"temp": 21.5, "sky": "clear"}, "call_id": "Ab3dE6gH9"})",
          {kEndResults},
          "It is 21.5 °C and clear in Paris.",  // V2+ rstrip(" ") the answer
          {kEos, kTools},
          R"([{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", )"
          R"("parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": )"
          R"(["c", "f"]}}, "required": ["city"]}}}])",
          {kEndTools, kInst},
          "You are helpful.\n\nThanks! And in Tokyo?",
          {kEndInst}}));
  // The prompt after the tool result alone ends at [/TOOL_RESULTS] (a tool message may be last).
  const Msgs upto(m.begin(), m.begin() + 4);
  const Ids ids = c3(upto, o);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.back(), kEndResults);
}

// Python's json.dumps spelling of values: key order kept, floats as repr (1e+16, 1000000000000000.0,
// 1e-05, 0.0001), -0 an int, non-ASCII raw (ensure_ascii=False), control characters escaped.
TEST_F(Chat, V3JsonSpelledAsPython) {
  const Msgs m = {
      msg("user", "a"),
      calls({{"123456789", "f",
              R"({"z": 1e16, "y": 1E15, "x": 1e-5, "w": 0.0001, "v": -0, "u": -0.0, "t": 123456789012,)"
              R"( "s": "ü\u0001\t/\"", "r": true, "q": null, "p": 3.14159, "o": 1.5e300})"}})};
  EXPECT_EQ(c3(m),
            e3({{kBos, kInst},
                "a",
                {kEndInst, kToolCalls},
                R"([{"name": "f", "arguments": {"z": 1e+16, "y": 1000000000000000.0, "x": 1e-05, )"
                R"("w": 0.0001, "v": 0, "u": -0.0, "t": 123456789012, "s": "ü\u0001\t/\"", "r": true, )"
                R"("q": null, "p": 3.14159, "o": 1.5e+300}, "id": "123456789"}])"}));
}

// test_normalization.py: system messages (and developer ones) are joined with "\n\n" wherever they are;
// a system message between two user messages splits them (test_user_system_user: two user messages);
// consecutive user / assistant messages are merged with "\n\n" (test_message_aggregation_*); a
// conversation not starting with a user message gets an empty one first (test_system_assistant_user,
// test_single_system). InstructTokenizerV1 puts the system prompt in the FIRST user message, V3 in the last.
TEST_F(Chat, NormalisationJoinsAndMerges) {
  // s, s, s, u, u, s, a, u -> [u\n\nu, a, u], system "s\n\ns\n\ns\n\ns" (the middle system is one of them).
  const Msgs m = {msg("system", "s1"), msg("developer", "s2"), msg("system", "s3"),   msg("user", "u1"),
                  msg("user", "u2"),   msg("system", "s4"),    msg("assistant", "a"), msg("user", "u3")};
  EXPECT_EQ(c3(m), e3({{kBos, kInst},
                       "u1\n\nu2",
                       {kEndInst},
                       "a",
                       {kEos, kInst},
                       "s1\n\ns2\n\ns3\n\ns4\n\nu3",
                       {kEndInst}}));
  EXPECT_EQ(
      c1(m),
      e1({{kBos}, "[INST] s1\n\ns2\n\ns3\n\ns4\n\nu1\n\nu2 [/INST]", "a", {kEos}, "[INST] u3 [/INST]"}));
  // Consecutive assistant messages merged; empty user content skipped in the join.
  const Msgs a = {msg("user", "u"),       msg("user", ""),        msg("user", "v"),
                  msg("assistant", "a1"), msg("assistant", "a2"), msg("user", "w")};
  EXPECT_EQ(c3(a), e3({{kBos, kInst}, "u\n\nv", {kEndInst}, "a1\n\na2", {kEos, kInst}, "w", {kEndInst}}));
  EXPECT_EQ(c1(a), e1({{kBos}, "[INST] u\n\nv [/INST]", "a1\n\na2", {kEos}, "[INST] w [/INST]"}));
  // u, s, u: two user messages, not merged.
  const Msgs usu = {msg("user", "U1"), msg("system", "S"), msg("user", "U2")};
  EXPECT_EQ(c3(usu), e3({{kBos, kInst}, "U1", {kEndInst, kInst}, "S\n\nU2", {kEndInst}}));
  EXPECT_EQ(c1(usu), e1({{kBos}, "[INST] S\n\nU1 [/INST]", "[INST] U2 [/INST]"}));
  // s, a, u: an empty user message first; v1's first user message is that empty one.
  const Msgs sau = {msg("system", "S"), msg("assistant", "A"), msg("user", "U")};
  EXPECT_EQ(c3(sau), e3({{kBos, kInst, kEndInst}, "A", {kEos, kInst}, "S\n\nU", {kEndInst}}));
  EXPECT_EQ(c1(sau), e1({{kBos}, "[INST] S\n\n [/INST]", "A", {kEos}, "[INST] U [/INST]"}));
  // Only system messages: one empty user message carrying them.
  const Msgs sss = {msg("system", "S"), msg("system", "S")};
  EXPECT_EQ(c3(sss), e3({{kBos, kInst}, "S\n\nS\n\n", {kEndInst}}));
  EXPECT_EQ(c1({msg("system", "S")}), e1({{kBos}, "[INST] S\n\n [/INST]"}));
  // A system message last (after a user message) is allowed by the validator and joins the prompt.
  EXPECT_EQ(c1({msg("user", "a"), msg("system", "b")}), e1({{kBos}, "[INST] b\n\na [/INST]"}));
}

// A final assistant message is continued (continue_final_message): no </s>. V2+ strip its trailing
// spaces (_encode_normal_content_assistant_message), V1 does not.
TEST_F(Chat, FinalAssistantMessageIsContinued) {
  const Msgs m = {msg("user", "Write a haiku."), msg("assistant", "Autumn moon ")};
  EXPECT_EQ(c3(m), e3({{kBos, kInst}, "Write a haiku.", {kEndInst}, "Autumn moon"}));
  EXPECT_EQ(c1(m), e1({{kBos}, "[INST] Write a haiku. [/INST]", "Autumn moon "}));
  // Two assistant messages at the end are merged, then continued.
  const Msgs two = {msg("user", "q"), msg("assistant", "x"), msg("assistant", "y")};
  EXPECT_EQ(c3(two), e3({{kBos, kInst}, "q", {kEndInst}, "x\n\ny"}));
  // A continued tool call: [TOOL_CALLS] ... without </s>.
  const Msgs tc = {msg("user", "q"), calls({{"123456789", "f", "{}"}})};
  EXPECT_EQ(c3(tc), e3({{kBos, kInst},
                        "q",
                        {kEndInst, kToolCalls},
                        R"([{"name": "f", "arguments": {}, "id": "123456789"}])"}));
}

// What mistral-common's validator (MistralRequestValidator / V3) and tokenizer refuse, refused with the
// message index and field.
TEST_F(Chat, RefusedLikeMistralCommon) {
  refused({}, "messages: the conversation is empty");
  refused({msg("assistant", "a")}, "messages[0].role");  // one message: user or system only
  refused({msg("tool", "a")}, "messages[0].role");
  refused({msg("user", "a"), msg("wizard", "b")}, "messages[1].role");
  refused({msg("user", "a"), result("123456789", "r")}, "messages[1].role");  // tool after user
  refused({msg("user", "a"), msg("assistant", "b"), msg("system", "s"), msg("user", "c")},
          "messages[2].role");  // system after assistant
  refused({msg("user", "a"), msg("assistant", ""), msg("user", "c")}, "messages[1].content");
  // Calls not all answered before the next assistant message (and too many answers).
  refused({msg("user", "a"), calls({{"123456789", "f", "{}"}, {"223456789", "f", "{}"}}),
           result("123456789", "r"), msg("assistant", "x")},
          "messages[3]: 2 tool call(s) of messages[1] are answered by 1");
  refused({msg("user", "a"), calls({{"123456789", "f", "{}"}}), result("123456789", "r"),
           result("123456789", "r"), msg("assistant", "x")},
          "messages[4]");
  refused({msg("user", "a"), calls({{"123456789", "bad name", "{}"}})},
          "messages[1].tool_calls[0].function.name");
  refused({msg("user", "a"), calls({{"123456789", "f", "{}"}}), result("", "r")}, "messages[2].tool_call_id");
  ChatOptions bad_tool;
  bad_tool.tools = {{"ok", "", "{}"}, {"f", "", "[1]"}};
  refused({msg("user", "a")}, "tools[1].function.parameters", bad_tool);
  bad_tool.tools = {{"", "", "{}"}};
  refused({msg("user", "a")}, "tools[0].function.name", bad_tool);

  // v3 only: call ids of 9 alphanumerics, and content XOR tool_calls (also after merging).
  auto r = v3_->apply_chat({msg("user", "a"), calls({{"call_12345", "f", "{}"}})}, ChatFormat::kMistralV3);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("messages[1].tool_calls[0].id"), std::string::npos) << r.error().message;
  r = v3_->apply_chat({msg("user", "a"), calls({{"123456789", "f", "{}"}}), result("call_1", "r")},
                      ChatFormat::kMistralV3);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("messages[2].tool_call_id"), std::string::npos) << r.error().message;
  r = v3_->apply_chat({msg("user", "a"), calls({{"123456789", "f", "{}"}}, "Let me look.")},
                      ChatFormat::kMistralV3);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("messages[1].content"), std::string::npos) << r.error().message;
  r = v3_->apply_chat({msg("user", "a"), msg("assistant", "Let me look."), calls({{"123456789", "f", "{}"}})},
                      ChatFormat::kMistralV3);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("messages[2].tool_calls"), std::string::npos) << r.error().message;
  // A v1 vocabulary has no [INST] control token for mistral-v3.
  EXPECT_FALSE(v1_->apply_chat({msg("user", "a")}, ChatFormat::kMistralV3).ok());
}

// The generic tool format (docs/agents.md "Chat prompts and tools") on a vocabulary without tool control
// tokens: the tool list and the instruction are the last part of the system prompt (which v1 joins to
// the first user message), assistant calls are the {"tool_calls": [...]} envelope the model answers
// with (after the message's text, if any), and a run of tool messages is a {"tool_results": [...]} text
// at the start of the next user turn.
TEST_F(Chat, GenericToolFormatOnV1) {
  ChatOptions o;
  o.tools = {
      {"get_weather", "Weather of a city", R"({"type":"object","properties":{"city":{"type":"string"}}})"}};
  const std::string block =
      "You can call these tools (their parameters are JSON Schema):\n"
      R"([{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", )"
      R"("parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])"
      "\n\nTo call tools, answer with only a JSON object of this form and nothing else: "
      R"({"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}. )"
      "Tool results come back in the next user turn as "
      R"({"tool_results": [{"name": "<tool name>", "content": <result>}]}. )"
      "Otherwise answer in plain text.";
  const Msgs m = {
      msg("system", "Be brief."),
      msg("user", "Weather in Paris and Rome?"),
      calls({{"c1", "get_weather", R"({"city": "Paris"})"}, {"c2", "get_weather", R"({"city": "Rome"})"}},
            "Checking."),
      result("c1", "21"),
      result("c2", "sunny", "get_weather"),
      msg("user", "And Oslo?")};
  EXPECT_EQ(c1(m, o), e1({{kBos},
                          "[INST] Be brief.\n\n" + block + "\n\nWeather in Paris and Rome? [/INST]",
                          "Checking.\n\n"
                          R"({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, )"
                          R"({"name": "get_weather", "arguments": {"city": "Rome"}}]})",
                          {kEos},
                          R"([INST] {"tool_results": [{"name": "get_weather", "content": 21}, )"
                          R"({"name": "get_weather", "content": "sunny"}]})"
                          "\n\nAnd Oslo? [/INST]"}));
  // No tools offered: no instruction block, history still rendered the same way; a tool result may end
  // the conversation (its user turn is the last).
  const Msgs n = {msg("user", "q"), calls({{"c1", "f", "{}"}}), result("c1", "ok")};
  EXPECT_EQ(c1(n), e1({{kBos},
                       "[INST] q [/INST]",
                       R"({"tool_calls": [{"name": "f", "arguments": {}}]})",
                       {kEos},
                       R"([INST] {"tool_results": [{"name": "f", "content": "ok"}]} [/INST])"}));
}

// kJinja: tools and tool calls reach the template as transformers passes them.
TEST(ChatJinja, ToolsAndCallsInTemplateContext) {
  Tokenizer::Vocab v;
  v.pieces = {"<unk>", "<s>", "</s>", "a"};
  v.scores = {0, 0, 0, 0};
  v.chat_template =
      "{% if tools is not none %}{% for t in tools %}{{ t.type }}:{{ t.function.name }}:"
      "{{ t.function.parameters.properties.city.type }};{% endfor %}{% else %}no tools;{% endif %}"
      "{% for m in messages %}{{ m.role }}"
      "{% if m.tool_calls is defined %}{% for c in m.tool_calls %}[{{ c.id }} {{ c.type }} {{ "
      "c.function.name }} "
      "{{ c.function.arguments.city }} {{ c.function.arguments|tojson }}]{% endfor %}{% endif %}"
      "{% if m.tool_call_id is defined %}({{ m.tool_call_id }} {{ m.name }}){% endif %}={{ m.content }}|"
      "{% endfor %}";
  auto tok = Tokenizer::from_vocab(v, "test");
  ASSERT_TRUE(tok.ok()) << tok.error().message;
  ChatOptions o;
  o.tools = {{"get_weather", "", R"({"type":"object","properties":{"city":{"type":"string"}}})"}};
  const Msgs m = {msg("user", "hi"), calls({{"abc", "get_weather", R"({"city":"Paris"})"}}),
                  result("abc", "21", "get_weather")};
  auto r = (*tok)->render_chat_template(m, true, o);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(
      *r,
      "function:get_weather:string;user=hi|assistant[abc function get_weather Paris {\"city\": \"Paris\"}]=|"
      "tool(abc get_weather)=21|");
  // selectattr / rejectattr, as Mistral's tool templates use them (user_messages, tool-free history).
  Tokenizer::Vocab v2 = v;
  v2.chat_template =
      "{% set users = messages|selectattr('role', 'equalto', 'user')|list %}{{ users|length }} "
      "{{ users[-1].content }} {% for m in messages|rejectattr('role', 'equalto', 'tool')"
      "|selectattr('tool_calls', 'undefined') %}{{ m.role }},{% endfor %} "
      "{{ messages|selectattr('tool_calls')|list|length }} {{ [0, 1, none, 'x']|select|list|length }} "
      "{{ [1, 2, 3, 4]|reject('even')|join('-') }}";
  auto tok2 = Tokenizer::from_vocab(v2, "test");
  ASSERT_TRUE(tok2.ok()) << tok2.error().message;
  const Msgs h = {msg("user", "a"), calls({{"abc", "f", "{}"}}), result("abc", "r"), msg("assistant", "b"),
                  msg("user", "c")};
  auto r2 = (*tok2)->render_chat_template(h);
  ASSERT_TRUE(r2.ok()) << r2.error().message;
  EXPECT_EQ(*r2, "2 c user,assistant,user, 1 2 1-3");  // what Jinja2 prints for the same template
  auto none = (*tok)->render_chat_template({msg("user", "hi")});
  ASSERT_TRUE(none.ok()) << none.error().message;
  EXPECT_EQ(*none, "no tools;user=hi|");
}

}  // namespace
}  // namespace mixtral
