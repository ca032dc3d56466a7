// Checks a Generate request against the model and the cluster; errors are INVALID_ARGUMENT with
// a message that names the offending field.
#pragma once

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "coordinator/request.h"
#include "moe/v1/inference.pb.h"

namespace moe {

// `max_sequence_tokens`: the most tokens one sequence can hold in a DP group's KV cache.
// `random_seed` is used when the request does not set one.
absl::StatusOr<RequestParams> ValidateRequest(const moe::v1::GenerateRequest& request,
                                              const ModelConfig& config,
                                              int64_t max_sequence_tokens, uint64_t random_seed);

}  // namespace moe
