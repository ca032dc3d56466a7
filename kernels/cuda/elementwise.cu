// Elementwise and per-row kernels: conversions, RMSNorm (also with the sums of squares taken
// elsewhere), SiLU- and GELU-gates, RoPE, embedding lookup, row gather / scatter / scaled adds,
// fills, scales, biases, soft-capping.
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
  if (i >= n * dim) return;
  const int32_t r = rows[i / dim];
  out[i] = r < 0 ? 0.0f : x[static_cast<int64_t>(r) * dim + i % dim];
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
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    yr[i] = (weight == nullptr ? 1.0f : weight[i]) * (xr[i] * inv);
  }
}

__global__ void SiluAndMulKernel(const float* gate_up, int64_t rows, int64_t inter, float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * inter) return;
  const int64_t r = i / inter, c = i % inter;
  const float g = gate_up[r * 2 * inter + c], u = gate_up[r * 2 * inter + inter + c];
  out[i] = g / (1.0f + expf(-g)) * u;
}

// Pair `pair` of a vector: (v[2 pair], v[2 pair + 1]) interleaved, (v[pair], v[pair + half])
// in halves.
__global__ void RopeKernel(float* x, int64_t rows, int64_t heads, int64_t row_stride,
                           int64_t head_stride, int64_t half, const float* cos, const float* sin,
                           bool interleaved) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * heads * half) return;
  const int64_t pair = i % half, h = (i / half) % heads, r = i / (half * heads);
  float* v = x + r * row_stride + h * head_stride;
  float* pa = interleaved ? v + 2 * pair : v + pair;
  float* pb = interleaved ? pa + 1 : pa + half;
  const float c = cos[r * half + pair], s = sin[r * half + pair];
  const float a = *pa, b = *pb;
  *pa = a * c - b * s;
  *pb = b * c + a * s;
}

__global__ void EmbeddingKernel(const bf16* table, int64_t first_row, int64_t table_rows,
                                const int32_t* tokens, int64_t n, int64_t dim, float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * dim) return;
  const int64_t t = i / dim, c = i % dim, r = tokens[t] - first_row;
  out[i] = r < 0 || r >= table_rows ? 0.0f : __bfloat162float(table[r * dim + c]);
}

__global__ void FillKernel(float* y, int64_t n, float value) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = value;
}

__global__ void ScaleRowsKernel(float* x, const float* scales, float scale, int64_t n,
                                int64_t dim) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n * dim) x[i] *= scales == nullptr ? scale : scales[i / dim];
}

__global__ void AddScaledRowsKernel(const float* x, const float* scales, const int32_t* index,
                                    int64_t n, int64_t dim, float* y) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * dim) return;
  const int64_t r = i / dim;
  const float s = scales == nullptr ? 1.0f : scales[r];
  y[static_cast<int64_t>(index[r]) * dim + i % dim] += s * x[i];
}

__global__ void AddToRowsKernel(float* y, int64_t rows, int64_t dim, int64_t ld,
                                const float* bias) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < rows * dim) y[(i / dim) * ld + i % dim] += bias[i % dim];
}

__global__ void SoftCapKernel(float* x, int64_t n, float cap) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] = tanhf(x[i] / cap) * cap;
}

// One thread per row: the CPU twin's order of the sum of squares.
__global__ void RowSumSquaresKernel(const float* x, int64_t rows, int64_t dim, int64_t ld,
                                    float* out) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  float s = 0.0f;
  for (int64_t i = 0; i < dim; ++i) s += x[r * ld + i] * x[r * ld + i];
  out[r] = s;
}

__global__ void NormalizeRowsKernel(float* x, int64_t rows, int64_t dim, int64_t ld,
                                    const float* sumsq, float replication, float width, float eps,
                                    const float* weight) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * dim) return;
  const int64_t r = i / dim, c = i % dim;
  const float inv = 1.0f / sqrtf(sumsq[r] / replication / width + eps);
  x[r * ld + c] = x[r * ld + c] * inv * weight[c];
}

__global__ void GeluTanhAndMulKernel(const float* gate_up, int64_t rows, int64_t inter,
                                     float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * inter) return;
  const int64_t r = i / inter, c = i % inter;
  const float g = gate_up[r * 2 * inter + c], u = gate_up[r * 2 * inter + inter + c];
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  out[i] = 0.5f * g * (1.0f + tanhf(k * (g + 0.044715f * g * g * g))) * u;
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
void Rope(float* x, int64_t rows, int64_t heads, int64_t row_stride, int64_t head_stride,
          int64_t dim, const float* cos, const float* sin, bool interleaved, cudaStream_t s) {
  const int64_t n = rows * heads * (dim / 2);
  if (n > 0) {
    RopeKernel<<<Blocks(n), kThreads, 0, s>>>(x, rows, heads, row_stride, head_stride, dim / 2, cos,
                                              sin, interleaved);
  }
}
void RopeInterleaved(float* x, int64_t rows, int64_t heads, int64_t row_stride, int64_t head_stride,
                     int64_t dim, const float* cos, const float* sin, cudaStream_t s) {
  Rope(x, rows, heads, row_stride, head_stride, dim, cos, sin, /*interleaved=*/true, s);
}
void EmbeddingLookup(const bf16* table, int64_t first_row, int64_t table_rows,
                     const int32_t* tokens, int64_t n, int64_t dim, float* out, cudaStream_t s) {
  if (n * dim > 0) {
    EmbeddingKernel<<<Blocks(n * dim), kThreads, 0, s>>>(table, first_row, table_rows, tokens, n,
                                                         dim, out);
  }
}
void Fill(float* y, int64_t n, float value, cudaStream_t s) {
  if (n > 0) FillKernel<<<Blocks(n), kThreads, 0, s>>>(y, n, value);
}
void Scale(float* y, float a, int64_t n, cudaStream_t s) {
  if (n > 0) ScaleRowsKernel<<<Blocks(n), kThreads, 0, s>>>(y, nullptr, a, n, 1);
}
void ScaleRows(float* x, const float* scales, int64_t n, int64_t dim, cudaStream_t s) {
  if (n * dim > 0) ScaleRowsKernel<<<Blocks(n * dim), kThreads, 0, s>>>(x, scales, 1.0f, n, dim);
}
void AddScaledRows(const float* x, const float* scales, const int32_t* index, int64_t n,
                   int64_t dim, float* y, cudaStream_t s) {
  if (n * dim > 0) {
    AddScaledRowsKernel<<<Blocks(n * dim), kThreads, 0, s>>>(x, scales, index, n, dim, y);
  }
}
void AddToRows(float* y, int64_t rows, int64_t dim, int64_t ld, const float* bias,
               cudaStream_t s) {
  if (rows * dim > 0) {
    AddToRowsKernel<<<Blocks(rows * dim), kThreads, 0, s>>>(y, rows, dim, ld, bias);
  }
}
void SoftCap(float* x, int64_t n, float cap, cudaStream_t s) {
  if (n > 0) SoftCapKernel<<<Blocks(n), kThreads, 0, s>>>(x, n, cap);
}
void RowSumSquares(const float* x, int64_t rows, int64_t dim, int64_t ld, float* out,
                   cudaStream_t s) {
  if (rows > 0) RowSumSquaresKernel<<<Blocks(rows), kThreads, 0, s>>>(x, rows, dim, ld, out);
}
void NormalizeRows(float* x, int64_t rows, int64_t dim, int64_t ld, const float* sumsq,
                   float replication, float width, float eps, const float* weight,
                   cudaStream_t s) {
  if (rows * dim > 0) {
    NormalizeRowsKernel<<<Blocks(rows * dim), kThreads, 0, s>>>(x, rows, dim, ld, sumsq,
                                                                replication, width, eps, weight);
  }
}
void GeluTanhAndMul(const float* gate_up, int64_t rows, int64_t inter, float* out,
                    cudaStream_t s) {
  const int64_t n = rows * inter;
  if (n > 0) GeluTanhAndMulKernel<<<Blocks(n), kThreads, 0, s>>>(gate_up, rows, inter, out);
}

int DeviceCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

}  // namespace moe::cuda
