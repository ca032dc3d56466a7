// Products with weights in their checkpoint format (bf16, fp8 e4m3 blocks, int4 groups): each
// weight is dequantized in registers as it is read and multiplied by float32 activations, with
// float32 accumulation — the twin of kernels/cpu/weight_matmul.cc.
//   few rows (decode): one warp per output feature, lanes striding over the inputs, so every
//     weight is read once for all rows;
//   more rows (prefill, and the rows of each expert): 16x16 tiles through shared memory, the
//     weight tile dequantized as it is loaded.
// The format is a template parameter: one kernel per format, no branch in the inner loop.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "kernels/cuda/ops.h"

namespace moe::cuda {
namespace {

constexpr int kWarps = 8;    // output features per block of the few-row kernel
constexpr int kMaxRows = 8;  // rows of x the few-row kernel takes at once
constexpr int kTile = 16;

template <WeightFormat F>
__device__ __forceinline__ float WeightAt(const WeightView& w, int64_t r, int64_t c) {
  const uint8_t* row = w.data + r * w.row_stride;
  if constexpr (F == WeightFormat::kBF16) {
    return __bfloat162float(reinterpret_cast<const bf16*>(row)[c]);
  } else if constexpr (F == WeightFormat::kF8Block) {
    __nv_fp8_e4m3 v;
    v.__x = row[c];
    const float scale = w.block_scales[((r + w.row0) / w.block_rows) * w.scale_stride +
                                       (c + w.col0) / w.block_cols];
    return static_cast<float>(v) * scale;
  } else {
    const uint32_t word = reinterpret_cast<const uint32_t*>(row)[c >> 3];
    const int q = static_cast<int>((word >> (4 * (c & 7))) & 0xfu) - 8;
    const uint16_t scale = w.group_scales[r * w.scale_stride + c / w.group_size];
    return static_cast<float>(q) * __bfloat162float(__ushort_as_bfloat16(scale));
  }
}

// y[i, r] for i < m <= kMaxRows: warp `r` of the grid reads weight row r once.
template <WeightFormat F>
__global__ void FewRowsKernel(const float* x, int64_t m, int64_t ldx, WeightView w, float* y,
                              int64_t ldy) {
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= w.rows) return;
  float acc[kMaxRows] = {};
  for (int64_t c = lane; c < w.cols; c += 32) {
    const float v = WeightAt<F>(w, r, c);
#pragma unroll
    for (int i = 0; i < kMaxRows; ++i) {
      if (i < m) acc[i] += v * x[i * ldx + c];
    }
  }
#pragma unroll
  for (int i = 0; i < kMaxRows; ++i) {
    float s = acc[i];
    for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0 && i < m) y[i * ldy + r] = s;
  }
}

// Rows [r0, r_end) (at most kTile of them) times the weight rows [n0, n0 + kTile).
template <WeightFormat F>
__device__ void TileProduct(const float* x, int64_t ldx, int64_t r0, int64_t r_end,
                            const WeightView& w, int64_t n0, float* y, int64_t ldy,
                            float (*xs)[kTile + 1], float (*ws)[kTile + 1]) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  float acc = 0.0f;
  for (int64_t k0 = 0; k0 < w.cols; k0 += kTile) {
    xs[ty][tx] = (r0 + ty < r_end && k0 + tx < w.cols) ? x[(r0 + ty) * ldx + k0 + tx] : 0.0f;
    ws[ty][tx] = (n0 + ty < w.rows && k0 + tx < w.cols) ? WeightAt<F>(w, n0 + ty, k0 + tx) : 0.0f;
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTile; ++kk) acc += xs[ty][kk] * ws[tx][kk];
    __syncthreads();
  }
  if (r0 + ty < r_end && n0 + tx < w.rows) y[(r0 + ty) * ldy + n0 + tx] = acc;
}

// Block (feature tile, row tile).
template <WeightFormat F>
__global__ void TiledKernel(const float* x, int64_t m, int64_t ldx, WeightView w, float* y,
                            int64_t ldy) {
  __shared__ float xs[kTile][kTile + 1];
  __shared__ float ws[kTile][kTile + 1];
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * kTile;
  TileProduct<F>(x, ldx, r0, std::min<int64_t>(r0 + kTile, m), w,
                 static_cast<int64_t>(blockIdx.x) * kTile, y, ldy, xs, ws);
}

// Block (feature tile, expert): walks the expert's rows in tiles.
template <WeightFormat F>
__global__ void GroupedKernel(const float* x, const int32_t* offsets, const WeightView* w,
                              int64_t k, float* y, int64_t ldy) {
  __shared__ float xs[kTile][kTile + 1];
  __shared__ float ws[kTile][kTile + 1];
  const int e = blockIdx.y;
  const int64_t r_begin = offsets[e], r_end = offsets[e + 1];
  const WeightView we = w[e];
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kTile) {
    TileProduct<F>(x, k, r0, std::min<int64_t>(r0 + kTile, r_end), we,
                   static_cast<int64_t>(blockIdx.x) * kTile, y, ldy, xs, ws);
  }
}

template <WeightFormat F>
void LaunchWeightLinear(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y,
                        int64_t ldy, cudaStream_t stream) {
  if (m <= kMaxRows) {
    const unsigned blocks = static_cast<unsigned>((w.rows + kWarps - 1) / kWarps);
    FewRowsKernel<F><<<blocks, kWarps * 32, 0, stream>>>(x, m, ldx, w, y, ldy);
    return;
  }
  const dim3 grid(static_cast<unsigned>((w.rows + kTile - 1) / kTile),
                  static_cast<unsigned>((m + kTile - 1) / kTile));
  TiledKernel<F><<<grid, dim3(kTile, kTile), 0, stream>>>(x, m, ldx, w, y, ldy);
}

}  // namespace

void WeightLinear(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y,
                  int64_t ldy, cudaStream_t stream) {
  if (m == 0 || w.rows == 0) return;
  switch (w.format) {
    case WeightFormat::kF8Block:
      return LaunchWeightLinear<WeightFormat::kF8Block>(x, m, ldx, w, y, ldy, stream);
    case WeightFormat::kInt4Group:
      return LaunchWeightLinear<WeightFormat::kInt4Group>(x, m, ldx, w, y, ldy, stream);
    default:
      return LaunchWeightLinear<WeightFormat::kBF16>(x, m, ldx, w, y, ldy, stream);
  }
}

void GroupedWeightLinear(const float* x, const int32_t* offsets, int64_t experts,
                         WeightFormat format, const WeightView* w, int64_t n, int64_t k, float* y,
                         int64_t ldy, cudaStream_t stream) {
  if (experts == 0 || n == 0) return;
  const dim3 grid(static_cast<unsigned>((n + kTile - 1) / kTile), static_cast<unsigned>(experts));
  const dim3 block(kTile, kTile);
  switch (format) {
    case WeightFormat::kF8Block:
      GroupedKernel<WeightFormat::kF8Block><<<grid, block, 0, stream>>>(x, offsets, w, k, y, ldy);
      return;
    case WeightFormat::kInt4Group:
      GroupedKernel<WeightFormat::kInt4Group><<<grid, block, 0, stream>>>(x, offsets, w, k, y, ldy);
      return;
    default:
      GroupedKernel<WeightFormat::kBF16><<<grid, block, 0, stream>>>(x, offsets, w, k, y, ldy);
      return;
  }
}

}  // namespace moe::cuda
