// MLA attention kernels: absorbed decode over the paged latent cache, causal attention over
// expanded K/V for prefill chunks, and the split of the expanded latent into that K/V. Each block
// handles one (sequence or query, head); its warps take every kWarps-th key with an online softmax,
// and the warps' partial results are merged.
#include <cuda_runtime.h>

#include "kernels/cuda/ops.h"

namespace moe::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxPerLane = 32;  // value dims per lane: up to 32 x 32 = 1024

__device__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Merges the warps' (max, sum, accumulator) into out[0, dv) / sum. acc_sh: [kWarps][dv].
__device__ void MergeWarps(const float* m_sh, const float* l_sh, const float* acc_sh, int dv,
                           float* out) {
  float m = -INFINITY;
  for (int w = 0; w < kWarps; ++w) m = fmaxf(m, m_sh[w]);
  float l = 0.0f;
  for (int w = 0; w < kWarps; ++w) l += m_sh[w] == -INFINITY ? 0.0f : l_sh[w] * expf(m_sh[w] - m);
  for (int d = threadIdx.x; d < dv; d += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      if (m_sh[w] != -INFINITY) o += acc_sh[w * dv + d] * expf(m_sh[w] - m);
    }
    out[d] = o / l;
  }
}

// One warp's online-softmax state over keys; `acc` holds dims lane, lane + 32, ...
struct OnlineSoftmax {
  float m = -INFINITY, l = 0.0f;
  float acc[kMaxPerLane];
  // Loops over acc run to the compile-time kMaxPerLane (with a guard), so every index is a
  // constant and acc stays in registers.
  __device__ void Init() {
#pragma unroll
    for (int j = 0; j < kMaxPerLane; ++j) acc[j] = 0.0f;
  }
  // Adds key score `s` (all lanes equal) with value vector `v` (dv dims, strided by `vstride`).
  __device__ void Add(float s, const float* v, int dv, int lane) {
    const float m_new = fmaxf(m, s);
    const float keep = m == -INFINITY ? 0.0f : expf(m - m_new), p = expf(s - m_new);
    l = l * keep + p;
#pragma unroll
    for (int j = 0; j < kMaxPerLane; ++j) {
      if (j * 32 + lane < dv) acc[j] = acc[j] * keep + p * v[j * 32 + lane];
    }
    m = m_new;
  }
  __device__ void Store(float* m_sh, float* l_sh, float* acc_sh, int dv, int warp, int lane) {
    if (lane == 0) {
      m_sh[warp] = m;
      l_sh[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < kMaxPerLane; ++j) {
      if (j * 32 + lane < dv) acc_sh[warp * dv + j * 32 + lane] = acc[j];
    }
  }
};

__global__ void MlaDecodeKernel(const float* q, int heads, int kv_lora, int rope,
                                const float* cache, const int32_t* block_tables, int max_blocks,
                                const int32_t* ctx_lens, int block_size, float scale, float* out) {
  extern __shared__ float sh[];
  const int row = kv_lora + rope;
  float* q_sh = sh;               // [row]
  float* m_sh = q_sh + row;       // [kWarps]
  float* l_sh = m_sh + kWarps;    // [kWarps]
  float* acc_sh = l_sh + kWarps;  // [kWarps][kv_lora]
  const int b = blockIdx.x, h = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* qh = q + (static_cast<int64_t>(b) * heads + h) * row;
  for (int i = threadIdx.x; i < row; i += blockDim.x) q_sh[i] = qh[i];
  __syncthreads();
  const int32_t* blocks = block_tables + static_cast<int64_t>(b) * max_blocks;
  OnlineSoftmax st;
  st.Init();
  for (int t = warp; t < ctx_lens[b]; t += kWarps) {
    const float* kv =
        cache + (static_cast<int64_t>(blocks[t / block_size]) * block_size + t % block_size) * row;
    float s = 0.0f;
    for (int i = lane; i < row; i += 32) s += q_sh[i] * kv[i];
    st.Add(WarpSum(s) * scale, kv, kv_lora, lane);
  }
  st.Store(m_sh, l_sh, acc_sh, kv_lora, warp, lane);
  __syncthreads();
  MergeWarps(m_sh, l_sh, acc_sh, kv_lora, out + (static_cast<int64_t>(b) * heads + h) * kv_lora);
}

__global__ void CausalKernel(const float* q, const float* k, const float* v, int64_t ctx, int heads,
                             int dqk, int dv, int64_t start, float scale, float* out) {
  extern __shared__ float sh[];
  float* q_sh = sh;               // [dqk]
  float* m_sh = q_sh + dqk;       // [kWarps]
  float* l_sh = m_sh + kWarps;    // [kWarps]
  float* acc_sh = l_sh + kWarps;  // [kWarps][dv]
  const int64_t i = blockIdx.x;
  const int h = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* qi = q + (i * heads + h) * dqk;
  for (int d = threadIdx.x; d < dqk; d += blockDim.x) q_sh[d] = qi[d];
  __syncthreads();
  const int64_t visible = min(ctx, start + i + 1);
  OnlineSoftmax st;
  st.Init();
  for (int64_t t = warp; t < visible; t += kWarps) {
    const float* kt = k + (t * heads + h) * dqk;
    float s = 0.0f;
    for (int d = lane; d < dqk; d += 32) s += q_sh[d] * kt[d];
    st.Add(WarpSum(s) * scale, v + (t * heads + h) * dv, dv, lane);
  }
  st.Store(m_sh, l_sh, acc_sh, dv, warp, lane);
  __syncthreads();
  MergeWarps(m_sh, l_sh, acc_sh, dv, out + (i * heads + h) * dv);
}

// Thread per (token, head, element of [k | v]).
__global__ void SplitMlaKvKernel(const float* kv, const float* latent, int64_t ctx, int64_t heads,
                                 int64_t nope, int64_t v_dim, int64_t kv_lora, int64_t rope,
                                 float* k, float* v) {
  const int64_t width = nope + rope + v_dim;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= ctx * heads * width) return;
  const int64_t e = i % width, th = i / width, t = th / heads;
  const int64_t qk = nope + rope;
  if (e < nope) {
    k[th * qk + e] = kv[th * (nope + v_dim) + e];
  } else if (e < qk) {
    k[th * qk + e] = latent[t * (kv_lora + rope) + kv_lora + (e - nope)];
  } else {
    v[th * v_dim + (e - qk)] = kv[th * (nope + v_dim) + nope + (e - qk)];
  }
}

}  // namespace

void SplitMlaKv(const float* kv, const float* latent, int64_t ctx, int64_t heads, int64_t nope,
                int64_t v_dim, int64_t kv_lora, int64_t rope, float* k, float* v,
                cudaStream_t stream) {
  const int64_t n = ctx * heads * (nope + rope + v_dim);
  if (n == 0) return;
  constexpr int kThreads = 256;
  SplitMlaKvKernel<<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      kv, latent, ctx, heads, nope, v_dim, kv_lora, rope, k, v);
}

void MlaDecodeAttention(const float* q, int64_t b, int64_t heads, int64_t kv_lora, int64_t rope,
                        const float* cache, const int32_t* block_tables, int64_t max_blocks,
                        const int32_t* ctx_lens, int64_t block_size, float scale, float* out,
                        cudaStream_t stream) {
  if (b == 0 || heads == 0 || kv_lora > 32 * kMaxPerLane) return;
  const size_t shared = sizeof(float) * (kv_lora + rope + 2 * kWarps + kWarps * kv_lora);
  MlaDecodeKernel<<<dim3(static_cast<unsigned>(b), static_cast<unsigned>(heads)), 32 * kWarps,
                    shared, stream>>>(q, static_cast<int>(heads), static_cast<int>(kv_lora),
                                      static_cast<int>(rope), cache, block_tables,
                                      static_cast<int>(max_blocks), ctx_lens,
                                      static_cast<int>(block_size), scale, out);
}

void CausalAttention(const float* q, const float* k, const float* v, int64_t q_len, int64_t ctx,
                     int64_t heads, int64_t dqk, int64_t dv, int64_t start, float scale, float* out,
                     cudaStream_t stream) {
  if (q_len == 0 || heads == 0 || dv > 32 * kMaxPerLane) return;
  const size_t shared = sizeof(float) * (dqk + 2 * kWarps + kWarps * dv);
  CausalKernel<<<dim3(static_cast<unsigned>(q_len), static_cast<unsigned>(heads)), 32 * kWarps,
                 shared, stream>>>(q, k, v, ctx, static_cast<int>(heads), static_cast<int>(dqk),
                                   static_cast<int>(dv), start, scale, out);
}

}  // namespace moe::cuda
