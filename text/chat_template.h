// A checkpoint's chat template, rendered as transformers' `apply_chat_template(..., tokenize=False)`
// renders it: each message without its null-valued keys, reasoning given under `reasoning_content`,
// `thinking` or `reasoning` visible under the first two as well, `tools` (none when not given),
// `add_generation_prompt`, the tokenizer's named special tokens (`bos_token`, `eos_token`, ...),
// and the caller's extra variables (`chat_template_kwargs`: `enable_thinking`, `thinking`), which
// win over the special tokens. The prompt it renders is tokenized without adding special tokens:
// the template writes them itself.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "text/jinja/template.h"

namespace moe::text {

struct Conversation {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();  // OpenAI-style message objects
  nlohmann::ordered_json tools;                                        // null: no tools
  bool add_generation_prompt = true;
  nlohmann::ordered_json variables = nlohmann::ordered_json::object();  // chat_template_kwargs

  // From the fields of an OpenAI chat request (as vLLM takes them): `messages` (required, each an
  // object with a string `role`), `tools`, `add_generation_prompt`, `chat_template_kwargs`.
  // INVALID_ARGUMENT names a field of the wrong type; `continue_final_message` is refused.
  static absl::StatusOr<Conversation> FromRequest(const nlohmann::ordered_json& body);
};

class ChatTemplate {
 public:
  // The template of the checkpoint in `dir`: `chat_template.jinja` if present, else
  // tokenizer_config.json's `chat_template` (a string, or a list of {name, template} where
  // "default" is taken). nullopt when the checkpoint has none; an error names a file that is
  // there but unreadable or a template that does not parse.
  static absl::StatusOr<std::optional<ChatTemplate>> Load(const std::string& dir);

  // `source` with the named special tokens of `special_tokens` (e.g. {"bos_token": "<s>"}).
  static absl::StatusOr<ChatTemplate> FromSource(const std::string& source,
                                                 const nlohmann::ordered_json& special_tokens,
                                                 std::string origin = "the chat template");

  // The prompt for `conversation`; INVALID_ARGUMENT for a message that is not an object or a
  // template that fails on it (raise_exception, an undefined value used), naming the line.
  absl::StatusOr<std::string> Render(const Conversation& conversation) const;

  const std::string& origin() const { return origin_; }

 private:
  ChatTemplate(jinja::Template t, jinja::Dict special, std::string origin)
      : template_(std::move(t)), special_(std::move(special)), origin_(std::move(origin)) {}

  jinja::Template template_;
  jinja::Dict special_;
  std::string origin_;
};

}  // namespace moe::text
