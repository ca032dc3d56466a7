#include "kernels/cpu/router.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/cpu/ops.h"

namespace moe {

void RouteTokens(const ModelConfig& c, const float* logits, const float* bias, int64_t n,
                 int32_t* ids, float* weights) {
  const int64_t experts = c.n_routed_experts, k = c.num_experts_per_tok;
  const int64_t group_size = experts / c.n_group;
  const bool grouped = c.n_group > 1 && c.topk_method != "greedy";
  const float kExcluded = -std::numeric_limits<float>::infinity();
  std::vector<float> scores(experts), choice(experts), group_score(c.n_group);
  std::vector<int32_t> order(experts), group_order(c.n_group);
  for (int64_t t = 0; t < n; ++t) {
    const float* l = logits + t * experts;
    if (c.scoring_func == "softmax") {
      std::copy(l, l + experts, scores.begin());
      cpu::SoftmaxInPlace(scores.data(), experts);
    } else {
      for (int64_t e = 0; e < experts; ++e) scores[e] = 1.0f / (1.0f + std::exp(-l[e]));
    }
    for (int64_t e = 0; e < experts; ++e) {
      choice[e] = scores[e] + (bias != nullptr && c.topk_method == "noaux_tc" ? bias[e] : 0.0f);
    }
    if (grouped) {
      for (int64_t g = 0; g < c.n_group; ++g) {
        const float* s = choice.data() + g * group_size;
        if (c.topk_method == "noaux_tc") {
          float a = kExcluded, b = kExcluded;  // the two largest
          for (int64_t i = 0; i < group_size; ++i) {
            if (s[i] > a) {
              b = a;
              a = s[i];
            } else if (s[i] > b) {
              b = s[i];
            }
          }
          group_score[g] = a + b;
        } else {
          group_score[g] = *std::max_element(s, s + group_size);
        }
      }
      std::iota(group_order.begin(), group_order.end(), 0);
      std::stable_sort(group_order.begin(), group_order.end(),
                       [&](int32_t a, int32_t b) { return group_score[a] > group_score[b]; });
      for (int64_t i = c.topk_group; i < c.n_group; ++i) {
        float* s = choice.data() + group_order[i] * group_size;
        std::fill(s, s + group_size, kExcluded);
      }
    }
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
      return choice[a] > choice[b] || (choice[a] == choice[b] && a < b);
    });
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      ids[t * k + j] = order[j];
      weights[t * k + j] = scores[order[j]];
      sum += scores[order[j]];
    }
    const float norm = c.norm_topk_prob ? 1.0f / (sum + 1e-20f) : 1.0f;
    for (int64_t j = 0; j < k; ++j) {
      weights[t * k + j] = weights[t * k + j] * norm * static_cast<float>(c.routed_scaling_factor);
    }
  }
}

}  // namespace moe
