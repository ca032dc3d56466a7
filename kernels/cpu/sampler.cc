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

namespace {

// The tokens sampling may pick and their unnormalised probabilities, in token-id order (the draw
// walks them in that order: the distribution does not depend on it, and id order is what a GPU
// can reproduce without sorting the vocabulary). Not for greedy specs.
std::vector<std::pair<int32_t, double>> KeptTokens(const float* logits, int64_t vocab,
                                                   const SamplingSpec& spec) {
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
  std::vector<std::pair<int32_t, double>> kept;
  for (size_t i = 0; i < keep; ++i) kept.push_back({ids[i], p[i]});
  std::sort(kept.begin(), kept.end());
  return kept;
}

// The token whose interval of the kept mass holds u * mass, skipping `skip`.
int32_t Walk(const std::vector<std::pair<int32_t, double>>& kept, double u, int32_t skip) {
  double mass = 0;
  for (const auto& [id, prob] : kept) mass += id == skip ? 0 : prob;
  const double at = u * mass;
  double acc = 0;
  int32_t last = kept.back().first;
  for (const auto& [id, prob] : kept) {
    if (id == skip) continue;
    acc += prob;
    last = id;
    if (at < acc) return id;
  }
  return last;
}

}  // namespace

bool IsGreedy(const SamplingSpec& spec) { return spec.temperature <= 0.0f || spec.top_k == 1; }

int32_t SampleToken(const float* logits, int64_t vocab, const SamplingSpec& spec, uint64_t index) {
  if (IsGreedy(spec)) return static_cast<int32_t>(cpu::ArgMax(logits, vocab));
  return Walk(KeptTokens(logits, vocab, spec), SampleUniform(spec.seed, index), -1);
}

DraftVerdict VerifyDraft(const float* logits, int64_t vocab, const SamplingSpec& spec,
                         uint64_t index, int32_t draft) {
  if (IsGreedy(spec)) {
    const int32_t best = static_cast<int32_t>(cpu::ArgMax(logits, vocab));
    return {best == draft, best};
  }
  const auto kept = KeptTokens(logits, vocab, spec);
  double mass = 0, p_draft = 0;
  for (const auto& [id, prob] : kept) {
    mass += prob;
    if (id == draft) p_draft = prob;
  }
  // The acceptance draw is a stream of its own (seed ^ a constant), so it never equals the
  // resampling draw of the same index.
  constexpr uint64_t kAcceptStream = 0x5bd1e9955bd1e995ull;
  if (SampleUniform(spec.seed ^ kAcceptStream, index) * mass < p_draft) return {true, draft};
  if (p_draft >= mass) return {true, draft};  // the only token left: nothing else to draw
  return {false, Walk(kept, SampleUniform(spec.seed, index), draft)};
}

}  // namespace moe
