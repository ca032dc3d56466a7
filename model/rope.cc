#include "model/rope.h"

#include <algorithm>
#include <cmath>

namespace moe {
namespace {

double YarnMscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// The dimension (of `dim`) whose wavelength fits `rotations` turns in `max_pos` positions.
double CorrectionDim(double rotations, double dim, double base, double max_pos) {
  return dim * std::log(max_pos / (rotations * 2.0 * M_PI)) / (2.0 * std::log(base));
}

}  // namespace

RotaryEmbedding::RotaryEmbedding(const ModelConfig& c) : dim_(c.qk_rope_head_dim) {
  const int64_t half = dim_ / 2;
  const double base = c.rope_theta;
  inv_freq_.resize(static_cast<size_t>(half));
  softmax_scale_ = static_cast<float>(
      1.0 / std::sqrt(c.query_pre_attn_scalar > 0 ? static_cast<double>(c.query_pre_attn_scalar)
                                                  : static_cast<double>(c.qk_head_dim())));
  if (c.rope_local_theta > 0) {
    local_inv_freq_.resize(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i) {
      local_inv_freq_[i] = static_cast<float>(1.0 / std::pow(c.rope_local_theta, 2.0 * i / dim_));
    }
  }
  if (!c.rope_scaling) {
    for (int64_t i = 0; i < half; ++i) {
      double f = 1.0 / std::pow(base, 2.0 * i / dim_) / c.rope_linear_factor;
      if (c.llama3_rope) {
        // Llama 3/4: long wavelengths interpolated by `factor`, short ones kept, a smooth blend
        // between original/low_freq_factor and original/high_freq_factor.
        const Llama3RopeScaling& l3 = *c.llama3_rope;
        const double orig = static_cast<double>(l3.original_max_position_embeddings);
        const double wavelen = 2.0 * M_PI / f;
        if (wavelen > orig / l3.low_freq_factor) {
          f /= l3.factor;
        } else if (wavelen >= orig / l3.high_freq_factor) {
          const double smooth =
              (orig / wavelen - l3.low_freq_factor) / (l3.high_freq_factor - l3.low_freq_factor);
          f = (1.0 - smooth) * f / l3.factor + smooth * f;
        }
      }
      inv_freq_[i] = static_cast<float>(f);
    }
    return;
  }
  const RopeScaling& rs = *c.rope_scaling;
  const double factor = rs.factor;
  const double orig = rs.original_max_position_embeddings > 0
                          ? static_cast<double>(rs.original_max_position_embeddings)
                          : static_cast<double>(c.max_position_embeddings);
  double low = std::floor(CorrectionDim(rs.beta_fast, dim_, base, orig));
  double high = std::ceil(CorrectionDim(rs.beta_slow, dim_, base, orig));
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim_ - 1));
  if (low == high) high += 0.001;  // avoid a zero-width ramp
  for (int64_t i = 0; i < half; ++i) {
    const double pos_freq = std::pow(base, 2.0 * i / dim_);
    const double extrapolated = 1.0 / pos_freq, interpolated = 1.0 / (factor * pos_freq);
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    const double extrapolation_weight = 1.0 - ramp;  // high-frequency dims keep their frequency
    inv_freq_[i] = static_cast<float>(interpolated * (1.0 - extrapolation_weight) +
                                      extrapolated * extrapolation_weight);
  }
  if (rs.mscale != 0.0 && rs.mscale_all_dim != 0.0) {
    attention_factor_ =
        static_cast<float>(YarnMscale(factor, rs.mscale) / YarnMscale(factor, rs.mscale_all_dim));
  } else {
    attention_factor_ = static_cast<float>(YarnMscale(factor, 1.0));
  }
  if (rs.mscale_all_dim != 0.0) {
    const double m = YarnMscale(factor, rs.mscale_all_dim);
    softmax_scale_ = static_cast<float>(softmax_scale_ * m * m);
  }
}

void RotaryEmbedding::CosSin(int64_t position, float* cos, float* sin) const {
  const float p = static_cast<float>(position);
  for (size_t i = 0; i < inv_freq_.size(); ++i) {
    const float angle = p * inv_freq_[i];  // float32 product, as the reference computes it
    cos[i] = std::cos(angle) * attention_factor_;
    sin[i] = std::sin(angle) * attention_factor_;
  }
}

void RotaryEmbedding::SetAngles(ForwardBatch& batch) const {
  const int64_t n = batch.num_tokens(), half = dim_ / 2;
  batch.rope_cos = Tensor({n, half});
  batch.rope_sin = Tensor({n, half});
  for (int64_t t = 0; t < n; ++t) {
    CosSin(batch.positions[t], batch.rope_cos.row(t), batch.rope_sin.row(t));
  }
  if (local_inv_freq_.empty()) return;
  batch.local_rope_cos = Tensor({n, half});
  batch.local_rope_sin = Tensor({n, half});
  for (int64_t t = 0; t < n; ++t) {
    const float p = static_cast<float>(batch.positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = p * local_inv_freq_[i];
      batch.local_rope_cos.row(t)[i] = std::cos(angle);
      batch.local_rope_sin.row(t)[i] = std::sin(angle);
    }
  }
}

}  // namespace moe
