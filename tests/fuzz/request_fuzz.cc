// libFuzzer target for the request path, without a cluster: the first byte picks what the rest
// is — 0: a serialized moe.v1.GenerateRequest (gRPC), 1: an OpenAI /v1/completions JSON body,
// 2: an OpenAI /v1/chat/completions body — which then goes through everything a request meets
// before a worker sees it: the body's parsing, the prompt's encoding by a tokenizer (a chat's
// rendering with DeepSeek-V3.1's chat template first), validation against tiny-dsv3's config and
// the server's limits, and admission to a scheduler. Each step must return a status, never crash; a
// request that is admitted must hold only ids of the vocabulary and ask for tokens that fit.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#include <google/protobuf/stubs/logging.h>

#include "common/model_config.h"
#include "coordinator/model_text.h"
#include "coordinator/openai_request.h"
#include "coordinator/scheduler.h"
#include "coordinator/validation.h"
#include "tests/fuzz/fuzz_tokenizer.h"

namespace {

// common/presets/tiny-dsv3.json, compiled in by tests/fuzz/CMakeLists.txt.
constexpr char kConfig[] =
#include "tiny_dsv3_config.inc"
    ;
// tools/data/chat_templates/deepseek-v3.1.jinja, compiled in the same way.
constexpr char kChatTemplate[] =
#include "chat_template.inc"
    ;

void Admit(const moe::ModelText& text, const moe::ModelConfig& config,
           moe::v1::GenerateRequest request) {
  if (!text.Encode(&request).ok()) return;
  const moe::RequestLimits limits{/*max_sequence_tokens=*/256, /*max_prompt_tokens=*/200,
                                  /*max_new_tokens=*/100};
  auto params = moe::ValidateRequest(request, config, limits, /*random_seed=*/1);
  if (!params.ok()) return;
  for (int32_t id : params->prompt) {
    if (id < 0 || id >= config.vocab_size) std::abort();
  }
  if (params->max_tokens < 1 || params->max_tokens > limits.max_new_tokens ||
      static_cast<int64_t>(params->prompt.size()) + params->max_tokens > config.max_position_embeddings) {
    std::abort();
  }
  moe::SchedulerOptions so;
  so.blocks_per_group = 16;
  so.block_size = 16;
  so.max_waiting = 1;
  moe::Scheduler scheduler(so);
  (void)scheduler.Submit(std::move(*params));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Malformed messages are the point here: protobuf need not log each one.
  static const bool quiet = [] {
    google::protobuf::SetLogHandler(nullptr);
    return true;
  }();
  (void)quiet;
  static const moe::ModelConfig config = moe::ParseModelConfig(kConfig).value();
  static const moe::ModelText text = [] {
    char tmpl[] = "/tmp/request_fuzz.XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    std::ofstream(dir + "/tokenizer.json") << moe::fuzz::FullTokenizerJson();
    std::ofstream(dir + "/chat_template.jinja") << kChatTemplate;
    moe::ModelText t = moe::ModelText::Load(config, dir);
    if (t.tokenizer == nullptr || !t.chat_template) std::abort();
    return t;
  }();
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 3 == 0) {
    moe::v1::GenerateRequest request;
    if (request.ParseFromString(rest)) Admit(text, config, std::move(request));
  } else if (data[0] % 3 == 1) {
    auto parsed = moe::ParseCompletionRequest(rest);
    if (!parsed.ok()) return 0;
    for (const moe::v1::GenerateRequest& r : parsed->prompts) Admit(text, config, r);
  } else {
    auto parsed = moe::ParseChatCompletionRequest(rest);
    if (!parsed.ok()) return 0;
    moe::v1::GenerateRequest r = parsed->prompts[0];
    if (!text.EncodeConversation(*parsed->conversation, &r).ok()) return 0;
    if (r.max_tokens() == 0) r.set_max_tokens(8);
    Admit(text, config, r);
  }
  return 0;
}
