// POST /v1/responses (OpenAI's Responses API), stateless: the request is translated into a chat request
// (GenRequest) and the reply into a response object or its stream of events. Nothing is stored:
// `store` is accepted either way (OpenAI's default is true and clients send it) and
// `previous_response_id` is a 400 naming it.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "request.h"
#include "tools.h"

namespace mixtral::server {

struct ResponsesRequest {
  GenRequest gen;               // chat request: messages, sampling, format, tools
  nlohmann::ordered_json echo;  // request fields the response object repeats (instructions, tools, text, ...)
};

// Throws BadRequest naming the field.
ResponsesRequest parse_responses_request(const nlohmann::ordered_json& body, int64_t ctx);

// `input` (a string or items) after `instructions` as chat messages: message items (role user, system,
// developer, assistant; content a string or input_text/output_text parts), function_call items (calls of
// an assistant turn: consecutive ones join one assistant message) and function_call_output items (tool
// messages). Throws BadRequest naming e.g. "input[2].call_id".
std::vector<ChatMessage> responses_messages(const nlohmann::ordered_json& input,
                                            const std::string& instructions);

struct ResponseUsage {
  int64_t input_tokens = 0, cached_tokens = 0, output_tokens = 0;
};

// Builds the output items and events of one response.
class ResponseBuilder {
 public:
  ResponseBuilder(const ResponsesRequest& r, std::string id, int64_t created_at, std::string model);
  // The response object; status "in_progress", "completed" or "incomplete".
  nlohmann::ordered_json response(const std::string& status) const;
  // Non-streaming: the output items of a finished reply.
  void set_output(const ReplyReader::Final& f);
  // Streaming: the events (each with type and sequence_number) for the start, a reply event, the end.
  std::vector<nlohmann::ordered_json> start();
  std::vector<nlohmann::ordered_json> on(const ReplyEvent& ev);
  // finish_reason "stop", "length" or "tool_calls"; ends open items and adds response.completed (or
  // response.incomplete with incomplete_details.reason "max_output_tokens").
  std::vector<nlohmann::ordered_json> finish(const std::string& finish_reason, const ResponseUsage& u);
  // The stream's end when generation failed: an `error` event, then response.failed (status "failed",
  // error {code, message}).
  std::vector<nlohmann::ordered_json> fail(const std::string& code, const std::string& message);
  void set_finish(const std::string& finish_reason, const ResponseUsage& u);

 private:
  nlohmann::ordered_json event(const char* type, nlohmann::ordered_json fields);
  void close_open(std::vector<nlohmann::ordered_json>& out);
  std::string item_id(const char* prefix);

  const ResponsesRequest& r_;
  std::string id_, model_;
  int64_t created_at_;
  int64_t seq_ = 0;
  int n_items_ = 0;
  nlohmann::ordered_json output_ = nlohmann::ordered_json::array();
  bool open_ = false;  // output_.back() is being streamed
  std::string status_ = "in_progress";
  nlohmann::ordered_json usage_ = nullptr, incomplete_ = nullptr;
};

}  // namespace mixtral::server
