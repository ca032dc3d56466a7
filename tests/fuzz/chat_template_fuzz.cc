// libFuzzer target for the chat-template interpreter: the input is a template's source (a
// checkpoint's chat_template), parsed and rendered with a conversation that has a system
// prompt, a tool call and its result, list content and tools. Parsing and rendering must return
// a status, never crash, loop without end or grow without bound (the interpreter's output,
// range and call-depth limits hold).
#include <cstdint>
#include <string>

#include "nlohmann/json.hpp"
#include "text/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const moe::text::Conversation conversation = [] {
    moe::text::Conversation c;
    c.messages = nlohmann::ordered_json::parse(R"([
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Weather in Paris? 你好 🚀"}]},
      {"role": "assistant", "content": null, "reasoning_content": "Use the tool.",
       "tool_calls": [{"id": "c0", "type": "function",
                       "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
      {"role": "tool", "tool_call_id": "c0", "content": "21"},
      {"role": "assistant", "content": "<think>x</think>It is 21."}])");
    c.tools = nlohmann::ordered_json::parse(
        R"([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}])");
    c.variables = {{"enable_thinking", false}};
    return c;
  }();
  static const nlohmann::ordered_json special = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
  const std::string source(reinterpret_cast<const char*>(data), size);
  auto t = moe::text::ChatTemplate::FromSource(source, special);
  if (!t.ok()) return 0;
  (void)t->Render(conversation);
  return 0;
}
