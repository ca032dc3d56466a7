// Elementwise and per-row kernels: conversions, RMSNorm, SiLU-gate, RoPE, embedding lookup,
// row gather / scatter.
#include <cuda_bf16.h>

#include "kernels/cuda/ops.h"

namespace moe::cuda {
namespace {

constexpr int kThreads = 256;

int Blocks(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

__global__ void F32ToBf16Kernel(const float* x, bf16* y, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = __float2bfloat16_rn(x[i]);
}

__global__ void Bf16ToF32Kernel(const bf16* x, float* y, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = __bfloat162float(x[i]);
}

__global__ void F32ToBf16RowsKernel(const float* x, int64_t rows, int64_t cols, int64_t ldx,
                                    bf16* y) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < rows * cols) y[i] = __float2bfloat16_rn(x[(i / cols) * ldx + i % cols]);
}

__global__ void GatherKernel(const float* x, const int32_t* rows, int64_t n, int64_t dim,
                             float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n * dim) out[i] = x[static_cast<int64_t>(rows[i / dim]) * dim + i % dim];
}

__global__ void ScatterKernel(const float* x, const int32_t* rows, int64_t n, int64_t dim,
                              float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n * dim) out[static_cast<int64_t>(rows[i / dim]) * dim + i % dim] = x[i];
}

__global__ void AddKernel(float* y, const float* x, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] += x[i];
}

// One block per row; float accumulation of the sum of squares (then a tree reduction).
__global__ void RmsNormKernel(const float* x, int64_t dim, int64_t ld, const float* weight,
                              float eps, float* y) {
  __shared__ float partial[kThreads];
  const float* xr = x + blockIdx.x * ld;
  float* yr = y + blockIdx.x * ld;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  partial[threadIdx.x] = ss;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  const float inv = rsqrtf(partial[0] / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = weight[i] * (xr[i] * inv);
}

__global__ void SiluAndMulKernel(const float* gate_up, int64_t rows, int64_t inter, float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * inter) return;
  const int64_t r = i / inter, c = i % inter;
  const float g = gate_up[r * 2 * inter + c], u = gate_up[r * 2 * inter + inter + c];
  out[i] = g / (1.0f + expf(-g)) * u;
}

__global__ void RopeKernel(float* x, int64_t rows, int64_t heads, int64_t row_stride,
                           int64_t head_stride, int64_t half, const float* cos, const float* sin) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * heads * half) return;
  const int64_t pair = i % half, h = (i / half) % heads, r = i / (half * heads);
  float* v = x + r * row_stride + h * head_stride + 2 * pair;
  const float c = cos[r * half + pair], s = sin[r * half + pair];
  const float a = v[0], b = v[1];
  v[0] = a * c - b * s;
  v[1] = b * c + a * s;
}

__global__ void EmbeddingKernel(const bf16* table, const int32_t* tokens, int64_t n, int64_t dim,
                                float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * dim) return;
  const int64_t t = i / dim, c = i % dim;
  out[i] = __bfloat162float(table[static_cast<int64_t>(tokens[t]) * dim + c]);
}

}  // namespace

void F32ToBf16(const float* x, bf16* y, int64_t n, cudaStream_t s) {
  if (n > 0) F32ToBf16Kernel<<<Blocks(n), kThreads, 0, s>>>(x, y, n);
}
void Bf16ToF32(const bf16* x, float* y, int64_t n, cudaStream_t s) {
  if (n > 0) Bf16ToF32Kernel<<<Blocks(n), kThreads, 0, s>>>(x, y, n);
}
void F32ToBf16Rows(const float* x, int64_t rows, int64_t cols, int64_t ldx, bf16* y,
                   cudaStream_t s) {
  const int64_t n = rows * cols;
  if (n > 0) F32ToBf16RowsKernel<<<Blocks(n), kThreads, 0, s>>>(x, rows, cols, ldx, y);
}
void GatherRows(const float* x, const int32_t* rows, int64_t n, int64_t dim, float* out,
                cudaStream_t s) {
  if (n * dim > 0) GatherKernel<<<Blocks(n * dim), kThreads, 0, s>>>(x, rows, n, dim, out);
}
void ScatterRows(const float* x, const int32_t* rows, int64_t n, int64_t dim, float* out,
                 cudaStream_t s) {
  if (n * dim > 0) ScatterKernel<<<Blocks(n * dim), kThreads, 0, s>>>(x, rows, n, dim, out);
}
void Add(float* y, const float* x, int64_t n, cudaStream_t s) {
  if (n > 0) AddKernel<<<Blocks(n), kThreads, 0, s>>>(y, x, n);
}
void RmsNorm(const float* x, int64_t rows, int64_t dim, int64_t ld, const float* weight, float eps,
             float* y, cudaStream_t s) {
  if (rows > 0)
    RmsNormKernel<<<static_cast<unsigned>(rows), kThreads, 0, s>>>(x, dim, ld, weight, eps, y);
}
void SiluAndMul(const float* gate_up, int64_t rows, int64_t inter, float* out, cudaStream_t s) {
  const int64_t n = rows * inter;
  if (n > 0) SiluAndMulKernel<<<Blocks(n), kThreads, 0, s>>>(gate_up, rows, inter, out);
}
void RopeInterleaved(float* x, int64_t rows, int64_t heads, int64_t row_stride, int64_t head_stride,
                     int64_t dim, const float* cos, const float* sin, cudaStream_t s) {
  const int64_t n = rows * heads * (dim / 2);
  if (n > 0) {
    RopeKernel<<<Blocks(n), kThreads, 0, s>>>(x, rows, heads, row_stride, head_stride, dim / 2, cos,
                                              sin);
  }
}
void EmbeddingLookup(const bf16* table, const int32_t* tokens, int64_t n, int64_t dim, float* out,
                     cudaStream_t s) {
  if (n * dim > 0) EmbeddingKernel<<<Blocks(n * dim), kThreads, 0, s>>>(table, tokens, n, dim, out);
}

int DeviceCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

}  // namespace moe::cuda
