#include "kernels/attention.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/ops.h"

namespace moe::cpu {

void MlaDecodeAttention(const float* q, int64_t heads, int64_t kv_lora, int64_t rope,
                        const float* cache, const int32_t* blocks, int64_t block_size,
                        int64_t ctx_len, float scale, float* out) {
  const int64_t row = kv_lora + rope;
#pragma omp parallel if (heads * ctx_len * row > 65536)
  {
    std::vector<float> p(static_cast<size_t>(ctx_len));
#pragma omp for schedule(static)
    for (int64_t h = 0; h < heads; ++h) {
      const float* qh = q + h * row;
      for (int64_t t = 0; t < ctx_len; ++t) {
        const float* kv = cache + (static_cast<int64_t>(blocks[t / block_size]) * block_size +
                                   t % block_size) * row;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < row; ++i) s += qh[i] * kv[i];
        p[t] = s * scale;
      }
      SoftmaxInPlace(p.data(), ctx_len);
      float* oh = out + h * kv_lora;
      std::fill(oh, oh + kv_lora, 0.0f);
      for (int64_t t = 0; t < ctx_len; ++t) {
        const float* kv = cache + (static_cast<int64_t>(blocks[t / block_size]) * block_size +
                                   t % block_size) * row;
        const float w = p[t];
        for (int64_t i = 0; i < kv_lora; ++i) oh[i] += w * kv[i];
      }
    }
  }
}

void CausalAttention(const float* q, const float* k, const float* v, int64_t q_len, int64_t ctx,
                     int64_t heads, int64_t dqk, int64_t dv, int64_t start, float scale,
                     float* out) {
#pragma omp parallel if (q_len * heads * ctx * dqk > 65536)
  {
    std::vector<float> p(static_cast<size_t>(ctx));
#pragma omp for collapse(2) schedule(static)
    for (int64_t i = 0; i < q_len; ++i) {
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t visible = std::min(ctx, start + i + 1);
        const float* qi = q + (i * heads + h) * dqk;
        for (int64_t t = 0; t < visible; ++t) {
          const float* kt = k + (t * heads + h) * dqk;
          float s = 0.0f;
#pragma omp simd reduction(+ : s)
          for (int64_t d = 0; d < dqk; ++d) s += qi[d] * kt[d];
          p[t] = s * scale;
        }
        SoftmaxInPlace(p.data(), visible);
        float* o = out + (i * heads + h) * dv;
        std::fill(o, o + dv, 0.0f);
        for (int64_t t = 0; t < visible; ++t) {
          const float* vt = v + (t * heads + h) * dv;
          const float w = p[t];
          for (int64_t d = 0; d < dv; ++d) o[d] += w * vt[d];
        }
      }
    }
  }
}

}  // namespace moe::cpu
