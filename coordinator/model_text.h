// The model's text side as the coordinator serves it: its tokenizer and chat template, each
// loaded once at startup, or the reason it is missing. Token ids never depend on them; a text
// prompt without a tokenizer, or a conversation without a chat template, is FAILED_PRECONDITION
// with that reason.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "common/model_config.h"
#include "moe/v1/inference.pb.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace moe {

struct ModelText {
  std::shared_ptr<const text::Tokenizer> tokenizer;  // null: see tokenizer_status
  std::string tokenizer_status;
  std::optional<text::ChatTemplate> chat_template;   // absent: see chat_template_status
  std::string chat_template_status;

  // From the checkpoint folder `dir` (empty: no text at all), logging what was found.
  static ModelText Load(const ModelConfig& config, const std::string& dir);

  // Fills request->prompt_ids from its text `prompt` (encoded as the tokenizer's post-processor
  // says, BOS included) or its `messages` (rendered with the chat template, then encoded without
  // adding special tokens). Two prompts at once is INVALID_ARGUMENT; ids alone are left as they are.
  absl::Status Encode(moe::v1::GenerateRequest* request) const;
  // `conversation`, rendered and encoded into request->prompt_ids (which must be empty).
  absl::Status EncodeConversation(const text::Conversation& conversation,
                                  moe::v1::GenerateRequest* request) const;
};

}  // namespace moe
