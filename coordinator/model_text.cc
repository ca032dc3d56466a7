#include "coordinator/model_text.h"

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "text/tokenizer_files.h"

namespace moe {

ModelText ModelText::Load(const ModelConfig& config, const std::string& dir) {
  ModelText t;
  if (dir.empty()) {
    t.tokenizer_status = "the coordinator runs without a tokenizer";
    t.chat_template_status = t.tokenizer_status;
    return t;
  }
  auto tokenizer = text::LoadTokenizer(dir);
  if (!tokenizer.ok()) {
    t.tokenizer_status = absl::StrCat("the model has no usable tokenizer: ", tokenizer.status().message());
    if (absl::IsNotFound(tokenizer.status())) {
      MOE_LOG(WARNING) << t.tokenizer_status << "; the API takes token ids only";
    } else {
      MOE_LOG(ERROR) << t.tokenizer_status << "; text requests will fail, token ids still work";
    }
    t.chat_template_status = t.tokenizer_status;
    return t;
  }
  t.tokenizer = *std::move(tokenizer);
  MOE_LOG(INFO) << "tokenizer: " << t.tokenizer->source() << " (" << t.tokenizer->size() << " ids)";
  if (t.tokenizer->size() > config.vocab_size) {
    MOE_LOG(WARNING) << "the tokenizer has " << t.tokenizer->size()
                     << " ids, more than the model's vocab_size " << config.vocab_size
                     << ": text holding the others is rejected";
  }
  auto chat_template = text::ChatTemplate::Load(dir);
  if (!chat_template.ok()) {
    t.chat_template_status = absl::StrCat("the model's chat template is unusable: ",
                                          chat_template.status().message());
    MOE_LOG(ERROR) << t.chat_template_status << "; chat requests will fail";
  } else if (!chat_template->has_value()) {
    t.chat_template_status = absl::StrCat("the model has no chat template (", dir,
                                          " has neither chat_template.jinja nor a chat_template in "
                                          "tokenizer_config.json)");
    MOE_LOG(WARNING) << t.chat_template_status << "; chat requests will fail";
  } else {
    t.chat_template = **std::move(chat_template);
    MOE_LOG(INFO) << "chat template: " << t.chat_template->origin();
  }
  return t;
}

absl::Status ModelText::EncodeConversation(const text::Conversation& conversation,
                                           moe::v1::GenerateRequest* request) const {
  if (request->prompt_ids_size() > 0 || !request->prompt().empty()) {
    return absl::InvalidArgumentError("messages: give a conversation or a prompt, not both");
  }
  if (tokenizer == nullptr) return absl::FailedPreconditionError(tokenizer_status);
  if (!chat_template) return absl::FailedPreconditionError(chat_template_status);
  auto prompt = chat_template->Render(conversation);
  if (!prompt.ok()) return prompt.status();
  const std::vector<int32_t> ids = tokenizer->Encode(*prompt, /*add_special_tokens=*/false);
  request->mutable_prompt_ids()->Add(ids.begin(), ids.end());
  return absl::OkStatus();
}

absl::Status ModelText::Encode(moe::v1::GenerateRequest* request) const {
  if (request->messages_size() > 0) {
    text::Conversation conversation;
    for (int i = 0; i < request->messages_size(); ++i) {
      const moe::v1::ChatMessage& m = request->messages(i);
      if (m.role().empty()) return absl::InvalidArgumentError(absl::StrCat("messages[", i, "].role: required"));
      conversation.messages.push_back({{"role", m.role()}, {"content", m.content()}});
    }
    return EncodeConversation(conversation, request);
  }
  if (request->prompt().empty()) return absl::OkStatus();
  if (request->prompt_ids_size() > 0) {
    return absl::InvalidArgumentError("prompt and prompt_ids: give one of them, not both");
  }
  if (tokenizer == nullptr) return absl::FailedPreconditionError(tokenizer_status);
  const std::vector<int32_t> ids = tokenizer->Encode(request->prompt());
  request->mutable_prompt_ids()->Add(ids.begin(), ids.end());
  return absl::OkStatus();
}

}  // namespace moe
