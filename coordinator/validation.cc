#include "coordinator/validation.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace moe {

absl::StatusOr<RequestParams> ValidateRequest(const moe::v1::GenerateRequest& r,
                                              const ModelConfig& c, const RequestLimits& limits,
                                              uint64_t random_seed) {
  const int64_t max_sequence_tokens = limits.max_sequence_tokens;
  auto bad = [](auto... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (r.stop_size() > 16) return bad("stop: ", r.stop_size(), " stop strings, at most 16");
  for (int i = 0; i < r.stop_size(); ++i) {
    if (r.stop(i).empty() || r.stop(i).size() > 256) {
      return bad("stop[", i, "]: a stop string must have 1 to 256 bytes");
    }
  }
  if (r.prompt_ids().empty()) return bad("prompt: the prompt is empty (give prompt or prompt_ids)");
  for (int i = 0; i < r.prompt_ids_size(); ++i) {
    const int32_t id = r.prompt_ids(i);
    if (id < 0 || id >= c.vocab_size) {
      return bad("prompt_ids[", i, "]: token id ", id, " is outside the vocabulary [0, ",
                 c.vocab_size, ")");
    }
  }
  if (limits.max_prompt_tokens > 0 && r.prompt_ids_size() > limits.max_prompt_tokens) {
    return bad("prompt_ids: ", r.prompt_ids_size(), " tokens exceed this server's limit of ",
               limits.max_prompt_tokens, " (--max-prompt-tokens)");
  }
  if (r.max_tokens() <= 0) return bad("max_tokens: must be > 0, got ", r.max_tokens());
  if (limits.max_new_tokens > 0 && r.max_tokens() > limits.max_new_tokens) {
    return bad("max_tokens: ", r.max_tokens(), " exceeds this server's limit of ",
               limits.max_new_tokens, " (--max-new-tokens)");
  }
  const int64_t total = static_cast<int64_t>(r.prompt_ids_size()) + r.max_tokens();
  if (total > c.max_position_embeddings) {
    return bad("max_tokens: prompt (", r.prompt_ids_size(), " tokens) + max_tokens (",
               r.max_tokens(), ") = ", total, " exceeds the context of ", c.max_position_embeddings,
               " tokens (max_position_embeddings)");
  }
  if (total > max_sequence_tokens) {
    return bad("max_tokens: prompt (", r.prompt_ids_size(), " tokens) + max_tokens (",
               r.max_tokens(), ") = ", total, " exceeds the ", max_sequence_tokens,
               " tokens one sequence can hold in the KV cache");
  }
  const moe::v1::SamplingParams& s = r.sampling();
  const float temperature = s.has_temperature() ? s.temperature() : 1.0f;
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return bad("sampling.temperature: must be >= 0, got ", temperature);
  }
  if (s.top_k() < 0) return bad("sampling.top_k: must be >= 0, got ", s.top_k());
  const float top_p = s.has_top_p() ? s.top_p() : 1.0f;
  if (!(top_p > 0.0f && top_p <= 1.0f))
    return bad("sampling.top_p: must be in (0, 1], got ", top_p);
  if (r.has_logprobs() && (r.logprobs() < 0 || r.logprobs() > kMaxTopLogprobs)) {
    return bad("logprobs: must be in [0, ", kMaxTopLogprobs, "], got ", r.logprobs());
  }
  for (int i = 0; i < r.stop_token_ids_size(); ++i) {
    const int32_t id = r.stop_token_ids(i);
    if (id < 0 || id >= c.vocab_size) {
      return bad("stop_token_ids[", i, "]: token id ", id, " is outside the vocabulary [0, ",
                 c.vocab_size, ")");
    }
  }
  RequestParams p;
  p.prompt.assign(r.prompt_ids().begin(), r.prompt_ids().end());
  p.max_tokens = r.max_tokens();
  p.sampling.set_temperature(temperature);
  p.sampling.set_top_k(s.top_k());
  p.sampling.set_top_p(top_p);
  p.sampling.set_seed(s.has_seed() ? s.seed() : random_seed);
  if (r.has_logprobs()) {
    p.sampling.set_logprobs(true);
    p.sampling.set_top_logprobs(r.logprobs());
  }
  p.stop_token_ids.assign(r.stop_token_ids().begin(), r.stop_token_ids().end());
  p.ignore_eos = r.ignore_eos();
  return p;
}

}  // namespace moe
