// Products with a WeightMatrix in its checkpoint format (f32, bf16, f16, fp8 blocks, int4 groups),
// activations in float32. One binary runs on any x86-64 CPU: the SIMD code is compiled for each
// of SSSE3, SSE4, AVX2 and AVX-512 (and a scalar fallback) with Google Highway and picked at run
// time.
//
// Few rows (decode, or the tokens routed to one expert): each weight row is read once, decoded in
// registers and multiplied into all rows of x, threads splitting the output features. Many rows
// (prefill): panels of weight rows are decoded into float32 per thread and multiplied by BLAS, so
// the decoding is amortised over the rows. Inside a parallel region both run on the calling thread.
//
// A matrix marked for rounded x (WeightMatrix::x_rounding, `--activations bf16|int8`) is
// multiplied by bf16_product.h or int4_int8_product.h instead, at every row count, where the CPU
// has their dot products.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/weight_matrix.h"

namespace moe::cpu {

// Rows of x up to which the fused decode-and-multiply kernel is used.
inline constexpr int64_t kFusedMaxRows = 8;

// Bytes ahead of the weight stream that the few-row kernels prefetch. Without it one core streamed
// fp8 and int4 weights from memory at about half the rate of bf16 (the decode work between loads
// keeps too few misses in flight for the hardware prefetchers); 4 KB ahead, the few-row products
// and the engine's decode ran 1.3-1.6x faster (docs/performance.md).
inline constexpr int64_t kWeightPrefetchBytes = 4096;

// Prefetches the weight line at p for a few-row kernel multiplying it into kRows rows of x: into
// L2 (prefetcht2 on x86) for one or two rows, into L1 (prefetcht0) for more. For one row, L1
// left the engine's batch-1 decode 10-30% slower; for more rows, L2 its batch-8 decode 5-10%
// slower; non-temporal fetches were slower still (docs/performance.md).
template <int kRows>
inline void PrefetchWeights(const void* p) {
  if constexpr (kRows <= 2) {
    __builtin_prefetch(p, 0, 1);
  } else {
    __builtin_prefetch(p, 0, 3);
  }
}

// Output features per task of the fused kernel.
inline constexpr int64_t kFusedRowsPerTask = 16;

// Thread t's share of a few-row product's n output features when `threads` split it: one
// contiguous range, cut at multiples of kFusedRowsPerTask (empty for threads beyond the tasks).
struct RowRange {
  int64_t begin, end;
};
inline RowRange FusedRowsOfThread(int64_t n, int t, int threads) {
  const int64_t tasks = (n + kFusedRowsPerTask - 1) / kFusedRowsPerTask;
  return {std::min(n, tasks * t / threads * kFusedRowsPerTask),
          std::min(n, tasks * (t + 1) / threads * kFusedRowsPerTask)};
}

// y[m, n] = x[m, k] · W^T for W = w [n, k]; rows of x are `ldx` floats apart, rows of y `ldy`.
void MatMulNT(int64_t m, const float* x, int64_t ldx, const WeightMatrix& w, float* y,
              int64_t ldy);

// Rows [r0, r1) of w as float32, row after row (w.cols floats each).
void DequantizeRows(const WeightMatrix& w, int64_t r0, int64_t r1, float* dst);

// The SIMD target the dispatcher picked on this CPU, e.g. "AVX3" or "AVX2".
const char* WeightKernelTarget();

}  // namespace moe::cpu
