#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/ops.h"

namespace moe::cpu {

void MlaDecodeAttentionPart(const float* q, int64_t heads, int64_t kv_lora, int64_t rope,
                            const float* cache, const int32_t* blocks, int64_t block_size,
                            int64_t t0, int64_t t1, float scale, float* out, float* max,
                            float* sum) {
  // The latent rows are shared by every head, so the heads are the rows of two products per cache
  // block (each block's tokens are consecutive rows): scores [heads, tokens] = q · block^T, then
  // out += exp(scores - max) · the block's c_kv columns. Each cache row is read once for all
  // heads instead of once per head.
  const int64_t row = kv_lora + rope, n = t1 - t0;
  thread_local std::vector<float> scores;
  scores.resize(static_cast<size_t>(heads * n));
  auto block = [&](int64_t t) {
    return cache + static_cast<int64_t>(blocks[t / block_size]) * block_size * row;
  };
  for (int64_t t = t0; t < t1; t += block_size) {
    MatMulNT(heads, std::min(block_size, t1 - t), row, q, row, block(t), row,
             scores.data() + (t - t0), n);
  }
  for (int64_t h = 0; h < heads; ++h) {
    float* p = scores.data() + h * n;
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < n; ++t) top = std::max(top, p[t] *= scale);
    float total = 0.0f;
    for (int64_t t = 0; t < n; ++t) total += (p[t] = std::exp(p[t] - top));
    max[h] = top;
    sum[h] = total;
  }
  for (int64_t t = t0; t < t1; t += block_size) {
    MatMulNN(heads, kv_lora, std::min(block_size, t1 - t), scores.data() + (t - t0), n, block(t),
             row, out, kv_lora, t == t0 ? 0.0f : 1.0f);
  }
}

void MlaDecodeAttention(const float* q, int64_t heads, int64_t kv_lora, int64_t rope,
                        const float* cache, const int32_t* blocks, int64_t block_size,
                        int64_t ctx_len, float scale, float* out, int parts) {
  const int64_t n_blocks = (ctx_len + block_size - 1) / block_size;
  parts = static_cast<int>(std::clamp<int64_t>(parts, 1, std::max<int64_t>(1, n_blocks)));
  std::vector<float> maxes(static_cast<size_t>(parts * heads)), sums(maxes.size());
  std::vector<float> partial(parts > 1 ? static_cast<size_t>(parts * heads * kv_lora) : 0);
  auto part = [&](int i) {
    const int64_t b0 = n_blocks * i / parts, b1 = n_blocks * (i + 1) / parts;
    MlaDecodeAttentionPart(q, heads, kv_lora, rope, cache, blocks, block_size, b0 * block_size,
                           std::min(ctx_len, b1 * block_size), scale,
                           parts > 1 ? partial.data() + i * heads * kv_lora : out,
                           maxes.data() + i * heads, sums.data() + i * heads);
  };
  if (parts == 1) {
    part(0);
    for (int64_t h = 0; h < heads; ++h) Scale(out + h * kv_lora, 1.0f / sums[h], kv_lora);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(parts)
  for (int i = 0; i < parts; ++i) part(i);
  // The parts' sums rescaled to the largest score of all: out = sum_i e^(m_i - m) o_i / l.
  std::vector<float> weight(static_cast<size_t>(parts));
  for (int64_t h = 0; h < heads; ++h) {
    float top = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < parts; ++i) top = std::max(top, maxes[i * heads + h]);
    float total = 0.0f;
    for (int i = 0; i < parts; ++i) {
      weight[i] = std::exp(maxes[i * heads + h] - top);
      total += weight[i] * sums[i * heads + h];
    }
    float* o = out + h * kv_lora;
    std::fill(o, o + kv_lora, 0.0f);
    for (int i = 0; i < parts; ++i) {
      const float w = weight[i] / total;
      const float* src = partial.data() + (i * heads + h) * kv_lora;
      for (int64_t c = 0; c < kv_lora; ++c) o[c] += w * src[c];
    }
  }
}

void GroupedCausalAttention(const float* q, const float* k, const float* v, int64_t q_len,
                            int64_t ctx, int64_t heads, int64_t kv_heads, int64_t dqk, int64_t dv,
                            int64_t start, float scale, float* out, int64_t window, int64_t chunk) {
  // Per head and tile of query rows: S = Q K^T (one GEMM over the strided head slices), causal
  // mask, softmax per row, O = P V. Heads and tiles run in parallel; the products inside are
  // single-threaded BLAS calls. Query head h reads key/value head h / (heads / kv_heads).
  constexpr int64_t kTile = 128;
  const int64_t tiles = (q_len + kTile - 1) / kTile, group = heads / kv_heads;
#pragma omp parallel
  {
    std::vector<float> s(static_cast<size_t>(kTile * ctx));
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t tile = 0; tile < tiles; ++tile) {
        const int64_t i0 = tile * kTile, rows = std::min(kTile, q_len - i0);
        const int64_t visible = std::min(ctx, start + i0 + rows);  // keys any row of the tile sees
        const int64_t kvh = h / group;
        MatMulNT(rows, visible, dqk, q + (i0 * heads + h) * dqk, heads * dqk, k + kvh * dqk,
                 kv_heads * dqk, s.data(), visible);
        for (int64_t r = 0; r < rows; ++r) {
          float* row = s.data() + r * visible;
          const int64_t sees = std::min(ctx, start + i0 + r + 1);
          const int64_t first = FirstVisibleKey(sees - 1, window, chunk);
          for (int64_t t = first; t < sees; ++t) row[t] *= scale;
          SoftmaxInPlace(row + first, sees - first);
          std::fill(row, row + first, 0.0f);
          std::fill(row + sees, row + visible, 0.0f);
        }
        MatMulNN(rows, dv, visible, s.data(), visible, v + kvh * dv, kv_heads * dv,
                 out + (i0 * heads + h) * dv, heads * dv);
      }
    }
  }
}

void CausalAttention(const float* q, const float* k, const float* v, int64_t q_len, int64_t ctx,
                     int64_t heads, int64_t dqk, int64_t dv, int64_t start, float scale,
                     float* out) {
  GroupedCausalAttention(q, k, v, q_len, ctx, heads, heads, dqk, dv, start, scale, out);
}

void GqaDecodeAttention(const float* q, int64_t heads, int64_t kv_heads, int64_t head_dim,
                        const float* cache, const int32_t* blocks, int64_t block_size,
                        int64_t ctx_len, float scale, float* out, int64_t window, int64_t chunk) {
  const int64_t row = 2 * kv_heads * head_dim, group = heads / kv_heads;
  const int64_t first = FirstVisibleKey(ctx_len - 1, window, chunk);
#pragma omp parallel if (heads * ctx_len * head_dim > 65536)
  {
    std::vector<float> p(static_cast<size_t>(ctx_len));
#pragma omp for schedule(static)
    for (int64_t h = 0; h < heads; ++h) {
      const float* qh = q + h * head_dim;
      const int64_t k_off = (h / group) * head_dim, v_off = (kv_heads + h / group) * head_dim;
      for (int64_t t = first; t < ctx_len; ++t) {
        const float* kv =
            cache +
            (static_cast<int64_t>(blocks[t / block_size]) * block_size + t % block_size) * row;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < head_dim; ++i) s += qh[i] * kv[k_off + i];
        p[t] = s * scale;
      }
      SoftmaxInPlace(p.data() + first, ctx_len - first);
      float* oh = out + h * head_dim;
      std::fill(oh, oh + head_dim, 0.0f);
      for (int64_t t = first; t < ctx_len; ++t) {
        const float* kv =
            cache +
            (static_cast<int64_t>(blocks[t / block_size]) * block_size + t % block_size) * row;
        const float w = p[t];
        for (int64_t i = 0; i < head_dim; ++i) oh[i] += w * kv[v_off + i];
      }
    }
  }
}

}  // namespace moe::cpu
