// The MoE router of DeepSeek-V3 (and its V2 variants), as a pure function of the gate logits:
//   scores  = sigmoid(logits) or softmax(logits)                      (scoring_func)
//   choice  = scores + e_score_correction_bias                        (noaux_tc only)
//   groups  = n_group groups of experts ranked by the sum of their top-2 choice scores (noaux_tc)
//             or their best score (group_limited_greedy); experts outside the topk_group best
//             groups are excluded
//   experts = the num_experts_per_tok best choice scores
//   weights = the unbiased scores of those experts, divided by their sum (+1e-20) when
//             norm_topk_prob, times routed_scaling_factor
#pragma once

#include <cstdint>

#include "common/model_config.h"

namespace moe {

// logits [n, n_routed_experts] (float32); bias may be null (no correction). Writes ids and
// weights [n, num_experts_per_tok], ids ordered by descending choice score.
void RouteTokens(const ModelConfig& config, const float* logits, const float* bias, int64_t n,
                 int32_t* ids, float* weights);

}  // namespace moe
