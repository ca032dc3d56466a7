// Rotary position embedding of the qk_rope_head_dim dimensions, with DeepSeek's YaRN extension:
// per-dimension blend of interpolated (1 / (factor * base^(2i/d))) and extrapolated frequencies
// over a linear ramp between the beta_fast / beta_slow correction dimensions; cos and sin scaled
// by mscale(factor, mscale) / mscale(factor, mscale_all_dim); the softmax scale multiplied by
// mscale(factor, mscale_all_dim)^2, where mscale(s, m) = 0.1 m ln(s) + 1 (1 for s <= 1).
// Without YaRN: 1 / base^(2i/d), divided by a linear rope_scaling factor (Gemma 3's global
// layers) or scaled by Llama 3's wavelength bands (Llama 4); Gemma 3's sliding-window layers have
// their own base (rope_local_base_freq).
#pragma once

#include <cstdint>
#include <vector>

#include "common/model_config.h"
#include "model/forward_batch.h"

namespace moe {

class RotaryEmbedding {
 public:
  explicit RotaryEmbedding(const ModelConfig& config);

  int64_t dim() const { return dim_; }
  // cos and sin of each rotated pair at `position` (dim/2 values each), attention factor included.
  void CosSin(int64_t position, float* cos, float* sin) const;
  // Fills batch.rope_cos / rope_sin for every one of batch.positions (and the local layers'
  // local_rope_cos / local_rope_sin where the model has them).
  void SetAngles(ForwardBatch& batch) const;
  const std::vector<float>& inv_freq() const { return inv_freq_; }
  float attention_factor() const { return attention_factor_; }
  // 1/sqrt(qk_head_dim), YaRN-corrected.
  float softmax_scale() const { return softmax_scale_; }

 private:
  int64_t dim_;
  std::vector<float> inv_freq_;
  std::vector<float> local_inv_freq_;  // empty: no separate local base
  float attention_factor_ = 1.0f;
  float softmax_scale_ = 1.0f;
};

}  // namespace moe
