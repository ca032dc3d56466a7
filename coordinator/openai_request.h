// The body of an OpenAI /v1/completions or /v1/chat/completions request as the GenerateRequests
// it asks for: the prompt (a string, a list of strings, a list of token ids or a list of those)
// or the conversation (messages, tools, add_generation_prompt, chat_template_kwargs, as vLLM
// takes them), the sampling and stopping fields (OpenAI's, and vLLM's ignore_eos,
// skip_special_tokens, top_k, stop_token_ids), logprobs (a completion's count of alternatives, a
// chat's boolean with top_logprobs), n, stream and stream_options. What the server cannot do yet
// (echo, suffix, penalties, logit_bias, best_of > 1) is INVALID_ARGUMENT, not ignored; so is a
// field of the wrong type, named in the message.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "moe/v1/inference.pb.h"
#include "text/chat_template.h"

namespace moe {

struct CompletionRequest {
  std::vector<moe::v1::GenerateRequest> prompts;  // one per prompt, each with the shared fields
  // A chat request's conversation (then `prompts` holds one request without a prompt, and a
  // max_tokens of 0 when the body gives none: the rest of the context, as vLLM's default).
  std::optional<text::Conversation> conversation;
  int64_t n = 1;                                   // choices per prompt
  bool stream = false;
  bool include_usage = false;                      // stream_options.include_usage
  std::optional<std::string> model;
};

absl::StatusOr<CompletionRequest> ParseCompletionRequest(std::string_view body);
absl::StatusOr<CompletionRequest> ParseChatCompletionRequest(std::string_view body);

}  // namespace moe
