#include "kernels/cpu/attention.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/cpu/ops.h"

namespace moe::cpu {

void MlaDecodeAttention(const float* q, int64_t heads, int64_t kv_lora, int64_t rope,
                        const float* cache, const int32_t* blocks, int64_t block_size,
                        int64_t ctx_len, float scale, float* out) {
  // The latent rows are shared by every head, so the heads are the rows of two products per cache
  // block (each block's tokens are consecutive rows): scores [heads, tokens] = q · block^T, then,
  // after the softmax over all tokens, out += scores · the block's c_kv columns. Each cache row is
  // read once for all heads instead of once per head.
  const int64_t row = kv_lora + rope;
  const int64_t n_blocks = (ctx_len + block_size - 1) / block_size;
  thread_local std::vector<float> scores;
  scores.resize(static_cast<size_t>(heads * ctx_len));
  auto block = [&](int64_t b) {
    return cache + static_cast<int64_t>(blocks[b]) * block_size * row;
  };
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t t0 = b * block_size, n = std::min(block_size, ctx_len - t0);
    MatMulNT(heads, n, row, q, row, block(b), row, scores.data() + t0, ctx_len);
  }
  for (int64_t h = 0; h < heads; ++h) {
    float* p = scores.data() + h * ctx_len;
    for (int64_t t = 0; t < ctx_len; ++t) p[t] *= scale;
    SoftmaxInPlace(p, ctx_len);
  }
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t t0 = b * block_size, n = std::min(block_size, ctx_len - t0);
    MatMulNN(heads, kv_lora, n, scores.data() + t0, ctx_len, block(b), row, out, kv_lora,
             b == 0 ? 0.0f : 1.0f);
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
