// The OpenAI-compatible HTTP API of the coordinator, on cpp-httplib (Debian's libcpp-httplib, the
// library /metrics already uses; SSE is its chunked content provider):
//   POST /v1/completions       text or token-id prompts (batches too), n choices, streaming (SSE)
//                              with stream_options.include_usage, stop strings, seed, ...
//   POST /v1/chat/completions  501 until chat templates are applied
//   GET  /v1/models, GET /health, POST /tokenize, POST /detokenize (as vLLM's server has them)
// Errors are OpenAI's error JSON with the matching status: 400 bad request, 401 no or bad API key,
// 404 unknown model or route, 413 body over --max-request-bytes, 429 queue full, 503 not serving.
#pragma once

#include <string>

#include "coordinator/services.h"

namespace httplib {
class Server;
}

namespace moe {

class OpenAiApi {
 public:
  // `model_name` is what clients pass as "model" (and /v1/models lists).
  OpenAiApi(const ServingContext& ctx, std::string model_name);
  void Register(httplib::Server* server);

 private:
  ServingContext ctx_;
  std::string model_name_;
};

}  // namespace moe
