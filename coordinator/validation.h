// Checks a Generate request against the model and the cluster; errors are INVALID_ARGUMENT with
// a message that names the offending field.
#pragma once

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "coordinator/request.h"
#include "moe/v1/inference.pb.h"

namespace moe {

// The most alternatives a request may ask log-probabilities of (OpenAI's and vLLM's bound).
constexpr int32_t kMaxTopLogprobs = 20;

// What one request may ask for.
struct RequestLimits {
  int64_t max_sequence_tokens = 0;  // the most tokens one sequence can hold in a DP group's cache
  int64_t max_prompt_tokens = 0;    // --max-prompt-tokens (0: no limit but the context)
  int64_t max_new_tokens = 0;       // --max-new-tokens: the largest max_tokens (0: no limit)
};

// `random_seed` is used when the request does not set one.
absl::StatusOr<RequestParams> ValidateRequest(const moe::v1::GenerateRequest& request,
                                              const ModelConfig& config,
                                              const RequestLimits& limits, uint64_t random_seed);

}  // namespace moe
