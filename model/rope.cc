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

namespace {

// cos and sin of `position` x each frequency (a float32 product, as the reference computes it),
// times `factor`.
void AnglesAt(const std::vector<float>& inv_freq, float factor, int64_t position, float* cos,
              float* sin) {
  const float p = static_cast<float>(position);
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const float angle = p * inv_freq[i];
    cos[i] = std::cos(angle) * factor;
    sin[i] = std::sin(angle) * factor;
  }
}

void FillAngles(const std::vector<float>& inv_freq, float factor,
                const std::vector<int64_t>& positions, Tensor& cos, Tensor& sin) {
  const int64_t n = static_cast<int64_t>(positions.size());
  cos = Tensor({n, static_cast<int64_t>(inv_freq.size())});
  sin = Tensor({n, static_cast<int64_t>(inv_freq.size())});
  for (int64_t t = 0; t < n; ++t) AnglesAt(inv_freq, factor, positions[t], cos.row(t), sin.row(t));
}

}  // namespace

void RotaryEmbedding::CosSin(int64_t position, float* cos, float* sin) const {
  AnglesAt(inv_freq_, attention_factor_, position, cos, sin);
}

void RotaryEmbedding::SetAngles(ForwardBatch& batch) const {
  FillAngles(inv_freq_, attention_factor_, batch.positions, batch.rope_cos, batch.rope_sin);
  if (!local_inv_freq_.empty()) {
    FillAngles(local_inv_freq_, 1.0f, batch.positions, batch.local_rope_cos, batch.local_rope_sin);
  }
}

}  // namespace moe
