// JSON text -> nlohmann::ordered_json in linear time (see ordered_json.h).
#include "io/ordered_json.h"

#include <string>
#include <unordered_map>
#include <vector>

namespace mixtral {

using json = nlohmann::ordered_json;

namespace {

// SAX events -> ordered_json, with a hash index of each open object's keys (members are appended, never
// looked up in the member vector).
class OrderedBuilder {
 public:
  json root;
  bool failed = false;

  bool null() { return put(json(nullptr)); }
  bool boolean(bool v) { return put(json(v)); }
  bool number_integer(json::number_integer_t v) { return put(json(v)); }
  bool number_unsigned(json::number_unsigned_t v) { return put(json(v)); }
  bool number_float(json::number_float_t v, const json::string_t&) { return put(json(v)); }
  bool string(json::string_t& v) { return put(json(std::move(v))); }
  bool binary(json::binary_t&) { return false; }  // (not in JSON text)
  bool start_object(std::size_t) { return open(json::object()); }
  bool key(json::string_t& k) {
    frames_.back().key = std::move(k);
    return true;
  }
  bool end_object() { return close(); }
  bool start_array(std::size_t) { return open(json::array()); }
  bool end_array() { return close(); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) {
    failed = true;
    return false;
  }

 private:
  struct Frame {
    json* v;                                          // the open object or array
    std::unordered_map<std::string, size_t> members;  // object: key -> index in *v
    std::string key;                                  // object: the key of the next value
  };
  std::vector<Frame> frames_;

  // Stores v where the next value goes; returns where it now lives.
  json* place(json&& v) {
    if (frames_.empty()) {
      root = std::move(v);
      return &root;
    }
    Frame& f = frames_.back();
    if (f.v->is_array()) {
      f.v->get_ref<json::array_t&>().push_back(std::move(v));
      return &f.v->back();
    }
    auto& obj = f.v->get_ref<json::object_t&>();  // ordered_map: a vector of (key, value)
    auto [it, fresh] = f.members.try_emplace(f.key, obj.size());
    if (!fresh) {
      auto& slot = (obj.begin() + static_cast<std::ptrdiff_t>(it->second))->second;
      slot = std::move(v);  // a repeated key: the last value
      return &slot;
    }
    obj.emplace_back(f.key, std::move(v));
    return &obj.back().second;
  }
  bool put(json&& v) {
    place(std::move(v));
    return true;
  }
  bool open(json&& v) {
    json* p = place(std::move(v));
    frames_.push_back({p, {}, {}});
    return true;
  }
  bool close() {
    frames_.pop_back();
    return true;
  }
};

}  // namespace

nlohmann::ordered_json parse_ordered_json(std::string_view text) {
  OrderedBuilder b;
  const bool ok = json::sax_parse(text.begin(), text.end(), &b, json::input_format_t::json, true, false);
  if (!ok || b.failed) return json(json::value_t::discarded);
  return std::move(b.root);
}

}  // namespace mixtral
