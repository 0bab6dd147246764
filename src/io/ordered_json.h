// JSON with object members in the order written, parsed in linear time.
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

namespace mixtral {

// Parses JSON text into an ordered_json (object members in the order written) in time linear in the
// text: nlohmann's own ordered_json parse looks every key up in a vector, quadratic in an object's size
// (a 1 MB object of 90000 keys takes ~30 s), which untrusted input must not be able to ask for. A key
// written twice keeps its first position and its last value (as nlohmann::json's parse keeps the last).
// A syntax error gives a discarded value (is_discarded()), as parse(text, nullptr, false) does.
nlohmann::ordered_json parse_ordered_json(std::string_view text);

}  // namespace mixtral
