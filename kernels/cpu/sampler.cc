#include "kernels/cpu/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/splitmix.h"
#include "kernels/cpu/ops.h"

namespace moe {

double SampleUniform(uint64_t seed, uint64_t index) { return UniformDraw(seed, index); }

TokenLogprobs LogprobsOf(const float* logits, int64_t vocab, int32_t token, int32_t top) {
  double m = logits[0];
  for (int64_t i = 1; i < vocab; ++i) m = std::max<double>(m, logits[i]);
  double z = 0;
  for (int64_t i = 0; i < vocab; ++i) z += std::exp(static_cast<double>(logits[i]) - m);
  const double lse = m + std::log(z);
  TokenLogprobs out;
  out.logprob = static_cast<float>(logits[token] - lse);
  const int64_t k = std::clamp<int64_t>(top, 0, vocab);
  std::vector<int32_t> ids(static_cast<size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  for (int64_t i = 0; i < k; ++i) {
    out.top_ids.push_back(ids[static_cast<size_t>(i)]);
    out.top_logprobs.push_back(static_cast<float>(logits[ids[static_cast<size_t>(i)]] - lse));
  }
  return out;
}

int32_t SampleToken(const float* logits, int64_t vocab, const SamplingSpec& spec, uint64_t index) {
  if (spec.temperature <= 0.0f || spec.top_k == 1) {
    return static_cast<int32_t>(cpu::ArgMax(logits, vocab));
  }
  std::vector<int32_t> ids(static_cast<size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  auto better = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  const int64_t k = spec.top_k > 0 ? std::min<int64_t>(spec.top_k, vocab) : vocab;
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), better);
  ids.resize(static_cast<size_t>(k));
  // Probabilities of the candidates, in descending order.
  const double inv_t = 1.0 / spec.temperature, top = logits[ids[0]];
  std::vector<double> p(ids.size());
  double z = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    p[i] = std::exp((logits[ids[i]] - top) * inv_t);
    z += p[i];
  }
  // Nucleus: the shortest prefix with mass >= top_p (at least one token).
  size_t keep = ids.size();
  if (spec.top_p < 1.0f) {
    double mass = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      mass += p[i] / z;
      if (mass >= spec.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  // Draw in token-id order over the kept set (the distribution does not depend on the order; id
  // order is what a GPU can reproduce without sorting the vocabulary).
  std::vector<std::pair<int32_t, double>> kept_set;
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) {
    kept_set.push_back({ids[i], p[i]});
    kept += p[i];
  }
  std::sort(kept_set.begin(), kept_set.end());
  const double u = SampleUniform(spec.seed, index) * kept;
  double acc = 0;
  for (const auto& [id, prob] : kept_set) {
    acc += prob;
    if (u < acc) return id;
  }
  return kept_set.back().first;
}

}  // namespace moe
