#include "common/model_config.h"
#include "kernels/cuda/ops.h"

namespace moe::cuda {

RouterParams RouterParamsFor(const ModelConfig& c) {
  RouterParams p;
  p.experts = static_cast<int32_t>(c.n_routed_experts);
  p.top_k = static_cast<int32_t>(c.num_experts_per_tok);
  p.n_group = static_cast<int32_t>(c.n_group);
  p.topk_group = static_cast<int32_t>(c.topk_group);
  p.softmax_scoring = c.scoring_func == "softmax";
  p.group_top2_sum = c.topk_method == "noaux_tc";
  p.grouped = c.n_group > 1 && c.topk_method != "greedy";
  p.norm_topk_prob = c.norm_topk_prob;
  p.routed_scaling_factor = static_cast<float>(c.routed_scaling_factor);
  return p;
}

}  // namespace moe::cuda
