// Token sampling from one row of logits. The random draw is a pure function of (seed, index) —
// index = which output token of the request this is — so a seeded request gives the same tokens
// however it is batched, preempted or split over ranks.
#pragma once

#include <cstdint>
#include <vector>

namespace moe {

struct SamplingSpec {
  float temperature = 0.0f;  // <= 0: greedy (argmax)
  int32_t top_k = 0;         // 0: all tokens
  float top_p = 1.0f;        // (0, 1]
  uint64_t seed = 0;
};

// One token to draw: how, and which output token of the request it is (the seeded draw's index).
// The CUDA sampler takes the same struct, one per row.
struct SampleRequest {
  SamplingSpec spec;
  uint64_t index = 0;
  // Also report log-probabilities (of the raw logits, not the sampling distribution): the drawn
  // token's and those of the `top_logprobs` most likely tokens.
  bool logprobs = false;
  int32_t top_logprobs = 0;
};

// The log-probabilities at one position: log_softmax(logits) of `token`, and the `top` most
// likely tokens (most likely first, ties to the lower id) with theirs. Computed in double.
struct TokenLogprobs {
  float logprob = 0;
  std::vector<int32_t> top_ids;
  std::vector<float> top_logprobs;
};
TokenLogprobs LogprobsOf(const float* logits, int64_t vocab, int32_t token, int32_t top);

// Whether the spec picks the argmax (temperature <= 0, or top_k 1).
bool IsGreedy(const SamplingSpec& spec);

// Uniform in [0, 1), deterministic in (seed, index).
double SampleUniform(uint64_t seed, uint64_t index);

// Samples from softmax(logits / temperature) restricted to the top_k most likely tokens, then to
// the smallest prefix (by probability) whose mass reaches top_p; ties go to the lower token id.
// The draw walks the kept tokens in id order: u * (kept mass) falls in one token's interval.
int32_t SampleToken(const float* logits, int64_t vocab, const SamplingSpec& spec, uint64_t index);

// Speculative decoding's check of a drafted token against the target's logits at its position,
// for a draft proposed deterministically (the MTP layer's argmax). Greedy: the target's argmax,
// accepted when it is the draft. Sampled: the draft is accepted with probability p(draft) under
// the sampling distribution p (temperature, top-k, top-p as SampleToken); otherwise the token is
// drawn from p without the draft, renormalised. Either way the token follows p exactly, so
// speculation keeps the target's distribution (seeded outputs are reproducible, but not the
// tokens SampleToken alone would draw).
struct DraftVerdict {
  bool accepted;
  int32_t token;  // the draft when accepted, else the token that replaces it
};
DraftVerdict VerifyDraft(const float* logits, int64_t vocab, const SamplingSpec& spec,
                         uint64_t index, int32_t draft);

}  // namespace moe
