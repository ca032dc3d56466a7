// The OpenAI-compatible HTTP API of the coordinator, on cpp-httplib (Debian's libcpp-httplib, the
// library /metrics already uses; SSE is its chunked content provider):
//   POST /v1/completions       text or token-id prompts (batches too), n choices, streaming (SSE)
//                              with stream_options.include_usage, stop strings, seed, logprobs...
//   POST /v1/chat/completions  conversations rendered with the model's chat template (as
//                              transformers' apply_chat_template does), streaming as above
//   GET  /v1/models, GET /health, POST /tokenize, POST /detokenize (as vLLM's server has them)
// Errors are OpenAI's error JSON with the matching status: 400 bad request, 401 no or bad API key,
// 404 unknown model or route, 413 body over --max-request-bytes, 429 queue full, 503 not serving.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "coordinator/openai_request.h"
#include "coordinator/services.h"

namespace httplib {
class Server;
struct Response;
}

namespace moe {

class OpenAiApi {
 public:
  // `model_name` is what clients pass as "model" (and /v1/models lists).
  OpenAiApi(const ServingContext& ctx, std::string model_name);
  void Register(httplib::Server* server);

 private:
  // Runs a parsed completion or chat request and answers it (streamed or whole).
  void Complete(absl::StatusOr<CompletionRequest> parsed, httplib::Response& res) const;
  // A chat request's max_tokens when it gives none.
  int32_t DefaultMaxTokens(int prompt_tokens) const;

  ServingContext ctx_;
  std::string model_name_;
};

}  // namespace moe
