// libFuzzer target: a chat template parsed and rendered by the Jinja subset; errors are one line naming the
// template's source, and nothing crashes or loops (loops only iterate over finite values).
#include <cstddef>
#include <cstdint>
#include <string>

#include "../../fuzz/fuzz_check.h"
#include "tokenizer/jinja.h"

namespace mixtral {

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using tok::jinja::Value;
  const std::string name = "fuzz.json";
  auto t = tok::jinja::Template::parse(std::string_view(reinterpret_cast<const char*>(data), size), name);
  if (!t.ok()) {
    fuzz::check_error(t.error(), name);
    return 0;
  }
  Value ctx = Value::new_dict(), msgs = Value::new_list();
  for (const char* role : {"system", "user", "assistant", "user"}) {
    Value m = Value::new_dict();
    m.set("role", Value::string(role));
    m.set("content", Value::string(std::string("hello ") + role));
    msgs.list->push_back(m);
  }
  ctx.set("messages", msgs);
  ctx.set("bos_token", Value::string("<s>"));
  ctx.set("eos_token", Value::string("</s>"));
  ctx.set("add_generation_prompt", Value::boolean(true));
  auto out = t->render(ctx);
  if (!out.ok()) fuzz::check_error(out.error(), name);
  return 0;
}

}  // namespace mixtral
