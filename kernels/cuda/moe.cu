// MoE kernels: routing, permutation by expert, combine and token counts (the grouped expert GEMM
// is in weight_linear.cu).
#include <cuda_bf16.h>

#include "kernels/cuda/ops.h"

namespace moe::cuda {
namespace {

constexpr int kThreads = 256;

struct Best {
  float v;
  int i;
};

// Higher value wins; equal values go to the lower index.
__device__ Best Better(Best a, Best b) {
  if (b.v > a.v || (b.v == a.v && b.i < a.i)) return b;
  return a;
}

// Block-wide best of (values[i], i) for i < n.
__device__ Best BlockArgMax(const float* values, int n, Best* sh) {
  Best b{-INFINITY, 0x7fffffff};
  for (int i = threadIdx.x; i < n; i += blockDim.x) b = Better(b, Best{values[i], i});
  sh[threadIdx.x] = b;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] = Better(sh[threadIdx.x], sh[threadIdx.x + s]);
    __syncthreads();
  }
  const Best r = sh[0];
  __syncthreads();
  return r;
}

__global__ void RouteKernel(const float* logits, const float* bias, RouterParams p, int32_t* ids,
                            float* weights) {
  extern __shared__ float sh[];
  float* scores = sh;                  // [experts]
  float* choice = scores + p.experts;  // [experts]
  __shared__ Best red[kThreads];
  __shared__ int32_t chosen[64];
  __shared__ float group_score[64];  // shared, not a local array: thread 0 indexes it at run time
  __shared__ bool keep[64];
  const float* l = logits + static_cast<int64_t>(blockIdx.x) * p.experts;
  for (int e = threadIdx.x; e < p.experts; e += blockDim.x) scores[e] = l[e];
  __syncthreads();
  if (p.softmax_scoring) {
    const float mx = BlockArgMax(scores, p.experts, red).v;
    if (threadIdx.x == 0) {
      float z = 0.0f;
      for (int e = 0; e < p.experts; ++e) {
        scores[e] = expf(scores[e] - mx);
        z += scores[e];
      }
      for (int e = 0; e < p.experts; ++e) scores[e] /= z;
    }
  } else {
    for (int e = threadIdx.x; e < p.experts; e += blockDim.x) {
      scores[e] = 1.0f / (1.0f + expf(-scores[e]));
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < p.experts; e += blockDim.x) {
    choice[e] = scores[e] + (bias != nullptr ? bias[e] : 0.0f);
  }
  __syncthreads();
  if (p.grouped && threadIdx.x == 0) {
    // Rank groups by the sum of their top-2 (or their best) choice scores; keep topk_group.
    const int gs = p.experts / p.n_group;
    for (int g = 0; g < p.n_group; ++g) {
      float a = -INFINITY, b = -INFINITY;
      for (int i = 0; i < gs; ++i) {
        const float s = choice[g * gs + i];
        if (s > a) {
          b = a;
          a = s;
        } else if (s > b) {
          b = s;
        }
      }
      group_score[g] = p.group_top2_sum ? a + b : a;
    }
    for (int g = 0; g < p.n_group; ++g) keep[g] = false;
    for (int r = 0; r < p.topk_group; ++r) {
      int best = -1;
      for (int g = 0; g < p.n_group; ++g) {
        if (!keep[g] && (best < 0 || group_score[g] > group_score[best])) best = g;
      }
      keep[best] = true;
    }
    for (int g = 0; g < p.n_group; ++g) {
      if (!keep[g]) {
        for (int i = 0; i < gs; ++i) choice[g * gs + i] = -INFINITY;
      }
    }
  }
  __syncthreads();
  for (int j = 0; j < p.top_k; ++j) {
    const Best b = BlockArgMax(choice, p.experts, red);
    if (threadIdx.x == 0) {
      chosen[j] = b.i;
      choice[b.i] = -INFINITY;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int j = 0; j < p.top_k; ++j) sum += scores[chosen[j]];
    const float norm = p.norm_topk_prob ? 1.0f / (sum + 1e-20f) : 1.0f;
    for (int j = 0; j < p.top_k; ++j) {
      ids[blockIdx.x * p.top_k + j] = chosen[j];
      weights[blockIdx.x * p.top_k + j] = scores[chosen[j]] * norm * p.routed_scaling_factor;
    }
  }
}

// Thread per expert: how many (token, slot) pairs chose it.
__global__ void CountKernel(const int32_t* ids, int64_t pairs, int64_t experts, int32_t* counts) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= experts) return;
  int32_t c = 0;
  for (int64_t p = 0; p < pairs; ++p) c += ids[p] == e;
  counts[e] = c;
}

__global__ void ScanKernel(int32_t* offsets, int64_t experts) {  // offsets[1..E] hold counts
  if (threadIdx.x != 0) return;
  offsets[0] = 0;
  for (int64_t e = 1; e <= experts; ++e) offsets[e] += offsets[e - 1];
}

__global__ void ScatterKernel(const int32_t* ids, int64_t pairs, int64_t k, int64_t experts,
                              const int32_t* offsets, int32_t* sorted_token, int32_t* row_of) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= experts) return;
  int32_t pos = offsets[e];
  for (int64_t p = 0; p < pairs; ++p) {
    if (ids[p] == e) {
      sorted_token[pos] = static_cast<int32_t>(p / k);
      row_of[p] = pos++;
    }
  }
}

// Integer atomics: the counts do not depend on the order the adds land in.
__global__ void CountChoicesKernel(const int32_t* ids, int64_t n, int64_t* counts) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n && ids[i] >= 0) {
    atomicAdd(reinterpret_cast<unsigned long long*>(counts + ids[i]), 1ull);
  }
}

__global__ void CombineKernel(const float* y, const int32_t* row_of, const float* weights,
                              int64_t n, int64_t k, int64_t dim, float* out, bool accumulate) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * dim) return;
  const int64_t t = i / dim, c = i % dim;
  float s = accumulate ? out[i] : 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    const int32_t row = row_of[t * k + j];
    if (row >= 0) s += weights[t * k + j] * y[static_cast<int64_t>(row) * dim + c];
  }
  out[i] = s;
}

__global__ void SumRowRangesKernel(const float* y, const int64_t* rows, const int64_t* begin,
                                   int64_t n, int64_t dim, float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * dim) return;
  const int64_t t = i / dim, c = i % dim;
  float s = 0.0f;
  for (int64_t r = begin[t]; r < begin[t + 1]; ++r) s += y[rows[r] * dim + c];
  out[i] = s;
}

__global__ void SplitRoutingRowsKernel(const int32_t* meta, int64_t n, int64_t k, int32_t* ids,
                                       float* weights) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * k) return;
  const int64_t row = i / k, j = i % k;
  ids[i] = meta[row * 2 * k + j];
  weights[i] = __int_as_float(meta[row * 2 * k + k + j]);
}

int Blocks(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

}  // namespace

void RouteTokens(const float* logits, const float* bias, int64_t n, const RouterParams& p,
                 int32_t* ids, float* weights, cudaStream_t stream) {
  if (n == 0 || p.experts > 1024 || p.n_group > 64 || p.top_k > 64) return;
  RouteKernel<<<static_cast<unsigned>(n), kThreads, 2 * p.experts * sizeof(float), stream>>>(
      logits, bias, p, ids, weights);
}

void PermuteByExpert(const int32_t* ids, int64_t n, int64_t k, int64_t experts, int32_t* offsets,
                     int32_t* sorted_token, int32_t* row_of, cudaStream_t stream) {
  // -1 where no expert of this rank was chosen (all bits set).
  cudaMemsetAsync(sorted_token, 0xff, static_cast<size_t>(n * k) * sizeof(int32_t), stream);
  cudaMemsetAsync(row_of, 0xff, static_cast<size_t>(n * k) * sizeof(int32_t), stream);
  CountKernel<<<Blocks(experts), kThreads, 0, stream>>>(ids, n * k, experts, offsets + 1);
  ScanKernel<<<1, 1, 0, stream>>>(offsets, experts);
  ScatterKernel<<<Blocks(experts), kThreads, 0, stream>>>(ids, n * k, k, experts, offsets,
                                                          sorted_token, row_of);
}

void CountChoices(const int32_t* ids, int64_t n, int64_t* counts, cudaStream_t stream) {
  if (n > 0) CountChoicesKernel<<<Blocks(n), kThreads, 0, stream>>>(ids, n, counts);
}

void SumRowRanges(const float* y, const int64_t* rows, const int64_t* begin, int64_t n, int64_t dim,
                  float* out, cudaStream_t stream) {
  if (n * dim > 0) {
    SumRowRangesKernel<<<Blocks(n * dim), kThreads, 0, stream>>>(y, rows, begin, n, dim, out);
  }
}

void SplitRoutingRows(const int32_t* meta, int64_t n, int64_t k, int32_t* ids, float* weights,
                      cudaStream_t stream) {
  if (n * k > 0) {
    SplitRoutingRowsKernel<<<Blocks(n * k), kThreads, 0, stream>>>(meta, n, k, ids, weights);
  }
}

void CombineRows(const float* y, const int32_t* row_of, const float* weights, int64_t n, int64_t k,
                 int64_t dim, float* out, bool accumulate, cudaStream_t stream) {
  if (n * dim > 0) {
    CombineKernel<<<Blocks(n * dim), kThreads, 0, stream>>>(y, row_of, weights, n, k, dim, out,
                                                            accumulate);
  }
}

}  // namespace moe::cuda
