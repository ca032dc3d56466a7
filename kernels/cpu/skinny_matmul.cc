#include "kernels/cpu/skinny_matmul.h"

#include <omp.h>

#include <algorithm>

#include "common/status_macros.h"

// One build runs everywhere: the hot loop is compiled for AVX-512, AVX2 and the baseline, and the
// loader picks the best the CPU has.
#if defined(__x86_64__) && defined(__GNUC__)
#define MOE_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MOE_VECTOR_CLONES
#endif

namespace moe::cpu {
namespace {

constexpr int kLanes = 16;

// Weight rows per pass: enough independent accumulators (M x R vectors) to hide FMA latency,
// few enough to stay in registers.
template <int M>
constexpr int RowsPerPass() {
  return M <= 2 ? 4 : (M <= 4 ? 3 : 2);
}

// Output columns [j0, j1) of y.
template <int M>
MOE_VECTOR_CLONES void Columns(int64_t j0, int64_t j1, int64_t k, const float* x, int64_t ldx,
                               const float* w, int64_t ldw, float* y, int64_t ldy, float beta) {
  constexpr int R = RowsPerPass<M>();
  const int64_t k_vec = k / kLanes * kLanes;
  auto finish = [&](int i, int64_t j, float dot) {
    float* out = y + i * ldy + j;
    *out = beta == 0.0f ? dot : dot + beta * *out;
  };
  int64_t j = j0;
  for (; j + R <= j1; j += R) {
    float acc[M][R][kLanes] = {};
    for (int64_t t = 0; t < k_vec; t += kLanes) {
      for (int r = 0; r < R; ++r) {
        const float* wr = w + (j + r) * ldw + t;
        for (int i = 0; i < M; ++i) {
          const float* xr = x + i * ldx + t;
#pragma omp simd
          for (int v = 0; v < kLanes; ++v) acc[i][r][v] += xr[v] * wr[v];
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const float* wr = w + (j + r) * ldw;
      for (int i = 0; i < M; ++i) {
        float dot = 0.0f;
        for (int v = 0; v < kLanes; ++v) dot += acc[i][r][v];
        for (int64_t t = k_vec; t < k; ++t) dot += x[i * ldx + t] * wr[t];
        finish(i, j + r, dot);
      }
    }
  }
  for (; j < j1; ++j) {  // the last columns, fewer than R
    const float* wr = w + j * ldw;
    for (int i = 0; i < M; ++i) {
      float dot = 0.0f;
      for (int64_t t = 0; t < k; ++t) dot += x[i * ldx + t] * wr[t];
      finish(i, j, dot);
    }
  }
}

template <int M>
void Run(int64_t n, int64_t k, const float* x, int64_t ldx, const float* w, int64_t ldw, float* y,
         int64_t ldy, float beta) {
  constexpr int R = RowsPerPass<M>();
#pragma omp parallel
  {
    // Contiguous column ranges, multiples of R, one per thread.
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t per = ((n + threads - 1) / threads + R - 1) / R * R;
    const int64_t j0 = std::min(n, id * per), j1 = std::min(n, j0 + per);
    if (j0 < j1) Columns<M>(j0, j1, k, x, ldx, w, ldw, y, ldy, beta);
  }
}

}  // namespace

void SkinnyMatMulNT(int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx, const float* w,
                    int64_t ldw, float* y, int64_t ldy, float beta) {
  MOE_CHECK(m >= 2 && m <= kSkinnyMaxRows);
  switch (m) {
    case 2:
      return Run<2>(n, k, x, ldx, w, ldw, y, ldy, beta);
    case 3:
      return Run<3>(n, k, x, ldx, w, ldw, y, ldy, beta);
    case 4:
      return Run<4>(n, k, x, ldx, w, ldw, y, ldy, beta);
    case 5:
      return Run<5>(n, k, x, ldx, w, ldw, y, ldy, beta);
    case 6:
      return Run<6>(n, k, x, ldx, w, ldw, y, ldy, beta);
    case 7:
      return Run<7>(n, k, x, ldx, w, ldw, y, ldy, beta);
    default:
      return Run<8>(n, k, x, ldx, w, ldw, y, ldy, beta);
  }
}

}  // namespace moe::cpu
