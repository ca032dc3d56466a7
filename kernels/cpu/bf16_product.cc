#include "kernels/cpu/bf16_product.h"

#include <immintrin.h>

#include <algorithm>
#include <iterator>

#include "common/status_macros.h"
#include "kernels/cpu/weight_matmul.h"

// GCC 12 reports the _mm512_undefined_*() inside its own AVX-512 intrinsics as uninitialised
// once they are inlined here; the values are never read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace moe::cpu {
namespace {

#define MOE_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// fp8 e4m3 as bf16 without its scale: the byte sign-extended to 16 bits, shifted left by 4 and
// masked puts the sign in bit 15 and exponent and mantissa in bits 4..10, a bf16 equal to the
// value times 2^-120 (normal codes; subnormal ones become bf16 subnormals, which the dot product
// reads as zero). x is rounded times 2^64, so the products are the true ones times 2^-56, and
// each block's sum is multiplied by its scale times 2^56: float32 keeps |x| < 2^64 and products
// down to 2^-70.
constexpr float kF8XFactor = 0x1p64f;
constexpr float kF8SumFactor = 0x1p56f;

// Rows of x per pass over a weight row: their sums stay in registers.
constexpr int kRowsPerPass = 8;

// Independent dot-product chains per row of x with few rows (the instruction's latency).
template <int M>
constexpr int Unroll() {
  return M == 1 ? 4 : (M == 2 ? 2 : 1);
}

// 32 weights from column c as bf16; kMasked: only the columns in `mask`, the rest zero.
template <bool kF8, bool kMasked = false>
MOE_BF16 inline __m512bh Weights(const uint8_t* row, int64_t c, __mmask32 mask = 0) {
  if constexpr (kF8) {
    const __m256i bytes = kMasked ? _mm256_maskz_loadu_epi8(mask, row + c)
                                  : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c));
    const __m512i b = _mm512_cvtepi8_epi16(bytes);
    return (__m512bh)_mm512_and_si512(_mm512_slli_epi16(b, 4),
                                      _mm512_set1_epi16(static_cast<int16_t>(0x87f0)));
  } else {
    return (__m512bh)(kMasked ? _mm512_maskz_loadu_epi16(mask, row + 2 * c)
                              : _mm512_loadu_si512(row + 2 * c));
  }
}

// Rows [i0, i0 + M) of y for weight row j.
template <int M, bool kF8>
MOE_BF16 void Row(const Bf16Rows& x, const WeightMatrix& w, int64_t j, int64_t i0, float* y,
                  int64_t ldy) {
  constexpr int U = Unroll<M>();
  const int64_t k = w.cols;
  const uint8_t* row = w.data + j * w.row_stride;
  const uint16_t* xr = x.x.data() + i0 * x.stride;
  // fp8: one segment per 128-column block (the first may start inside one), each with its scale.
  // bf16: the whole row, scale 1.
  const float* scales = nullptr;
  int64_t seg = k, first = k;
  if constexpr (kF8) {
    scales = w.BlockScalesOfRow(j);
    seg = w.block_cols;
    first = w.FirstBlockCols();
  }
  __m512 total[M];
  for (int i = 0; i < M; ++i) total[i] = _mm512_setzero_ps();
  int64_t s0 = 0, s1 = std::min(k, first);
  for (int64_t s = 0; s0 < k; ++s, s0 = s1, s1 = std::min(k, s1 + seg)) {
    __m512 acc[U][M];
    for (int u = 0; u < U; ++u) {
      for (int i = 0; i < M; ++i) acc[u][i] = _mm512_setzero_ps();
    }
    int64_t c = s0;
    for (; c + 32 * U <= s1; c += 32 * U) {
      constexpr int64_t kBytes = 32 * U * (kF8 ? 1 : 2);  // weight bytes this step reads
      const uint8_t* ahead = row + c * (kF8 ? 1 : 2) + kWeightPrefetchBytes;
      for (int64_t b = 0; b < kBytes; b += 64) {
        PrefetchWeights<M>(ahead + b);
      }
      for (int u = 0; u < U; ++u) {
        const __m512bh wv = Weights<kF8>(row, c + 32 * u);
        for (int i = 0; i < M; ++i) {
          const __m512bh xv = (__m512bh)_mm512_loadu_si512(xr + i * x.stride + c + 32 * u);
          acc[u][i] = _mm512_dpbf16_ps(acc[u][i], wv, xv);
        }
      }
    }
    for (; c < s1; c += 32) {
      const __mmask32 mask = c + 32 <= s1 ? ~__mmask32{0} : (__mmask32{1} << (s1 - c)) - 1;
      const __m512bh wv = Weights<kF8, true>(row, c, mask);
      for (int i = 0; i < M; ++i) {
        const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, xr + i * x.stride + c);
        acc[0][i] = _mm512_dpbf16_ps(acc[0][i], wv, xv);
      }
    }
    const __m512 scale = _mm512_set1_ps(kF8 ? scales[s] * kF8SumFactor : 1.0f);
    for (int i = 0; i < M; ++i) {
      __m512 sum = acc[0][i];
      for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][i]);
      total[i] = _mm512_fmadd_ps(sum, scale, total[i]);
    }
  }
  for (int i = 0; i < M; ++i) y[(i0 + i) * ldy + j] = _mm512_reduce_add_ps(total[i]);
}

template <int M, bool kF8>
MOE_BF16 void Rows(const Bf16Rows& x, const WeightMatrix& w, int64_t j0, int64_t j1, int64_t i0,
                   float* y, int64_t ldy) {
  for (int64_t j = j0; j < j1; ++j) Row<M, kF8>(x, w, j, i0, y, ldy);
}

using RowsFn = void (*)(const Bf16Rows&, const WeightMatrix&, int64_t, int64_t, int64_t, float*,
                        int64_t);

template <bool kF8>
constexpr RowsFn kRows[] = {Rows<1, kF8>, Rows<2, kF8>, Rows<3, kF8>, Rows<4, kF8>,
                            Rows<5, kF8>, Rows<6, kF8>, Rows<7, kF8>, Rows<8, kF8>};
static_assert(std::size(kRows<false>) == kRowsPerPass);

MOE_BF16 void RoundRows(int64_t m, const float* x, int64_t ldx, int64_t k, float factor,
                        uint16_t* out, int64_t stride) {
  const __m512 f = _mm512_set1_ps(factor);
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * ldx;
    uint16_t* oi = out + i * stride;
    for (int64_t c = 0; c < k; c += 32) {
      const __mmask32 mask = c + 32 <= k ? ~__mmask32{0} : (__mmask32{1} << (k - c)) - 1;
      const __mmask16 lo_mask = static_cast<__mmask16>(mask),
                      hi_mask = static_cast<__mmask16>(mask >> 16);
      const __m512 lo = _mm512_mul_ps(_mm512_maskz_loadu_ps(lo_mask, xi + c), f);
      const __m512 hi = _mm512_mul_ps(_mm512_maskz_loadu_ps(hi_mask, xi + c + 16), f);
      _mm512_storeu_si512(oi + c, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

}  // namespace

bool HasBf16DotProducts() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bf16");
  return has;
}

bool Bf16Serves(const WeightMatrix& w) {
  return (w.format == WeightFormat::kBF16 || w.format == WeightFormat::kF8Block) &&
         HasBf16DotProducts();
}

float Bf16Factor(const WeightMatrix& w) {
  return w.format == WeightFormat::kF8Block ? kF8XFactor : 1.0f;
}

void RoundRowsBf16(int64_t m, const float* x, int64_t ldx, int64_t k, float factor, Bf16Rows* out) {
  MOE_CHECK(HasBf16DotProducts());
  out->m = m;
  out->k = k;
  out->stride = (k + 31) / 32 * 32;
  out->factor = factor;
  out->x.resize(static_cast<size_t>(m * out->stride));
  RoundRows(m, x, ldx, k, factor, out->x.data(), out->stride);
}

void Bf16Product(const Bf16Rows& x, const WeightMatrix& w, int64_t j0, int64_t j1, float* y,
                 int64_t ldy) {
  MOE_CHECK(Bf16Serves(w) && x.k == w.cols && x.factor == Bf16Factor(w) && x.m >= 1);
  const bool f8 = w.format == WeightFormat::kF8Block;
  for (int64_t i0 = 0; i0 < x.m; i0 += kRowsPerPass) {
    const int64_t rows = std::min<int64_t>(kRowsPerPass, x.m - i0);
    (f8 ? kRows<true> : kRows<false>)[rows - 1](x, w, j0, j1, i0, y, ldy);
  }
}

}  // namespace moe::cpu
