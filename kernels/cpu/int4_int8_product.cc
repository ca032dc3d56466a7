#include "kernels/cpu/int4_int8_product.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <iterator>

#include "common/dtype.h"
#include "common/status_macros.h"
#include "kernels/cpu/weight_matmul.h"

// GCC 12 reports the _mm512_undefined_*() inside its own AVX-512 intrinsics as uninitialised
// once they are inlined here; the values are never read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace moe::cpu {
namespace {

#define MOE_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

constexpr int64_t kGroup = 32;
// Groups a row may have (k up to 32768): the weight row's scales go to the stack.
constexpr int64_t kMaxGroups = 1024;

int64_t Pairs(int64_t k) { return (k / kGroup + 1) / 2; }
// Groups rounded up to whole 16-float vectors (the offsets' dot product reads them so).
int64_t PaddedGroups(int64_t k) { return (k / kGroup + 15) / 16 * 16; }

MOE_VNNI float HorizontalSum(__m512 v) { return _mm512_reduce_add_ps(v); }

// Rows of x per pass over a weight row: their sums stay in registers.
constexpr int kRowsPerPass = 8;

// Rows [i0, i0 + M) of y for weight row j.
template <int M>
MOE_VNNI void Row(const Int8Rows& x, const WeightMatrix& w, int64_t j, int64_t i0, float* y,
                  int64_t ldy) {
  const int64_t k = w.cols, groups = k / kGroup, pairs = Pairs(k), padded = PaddedGroups(k);
  const uint8_t* row = w.data + j * w.row_stride;
  const uint16_t* scales = w.group_scales + j * w.scale_stride;
  alignas(64) float sw[kMaxGroups + 16];
  for (int64_t g = 0; g < groups; ++g) sw[g] = BF16ToF32(scales[g]);
  for (int64_t g = groups; g < padded + 2; ++g) sw[g] = 0.0f;
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m512i pattern = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
  __m512 acc[M];
  for (int i = 0; i < M; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    if ((p & 1) == 0) PrefetchWeights<M>(row + 32 * p + kWeightPrefetchBytes);
    // Two groups' 32 bytes; a last odd group reads its own 16 and leaves the rest zero.
    const __m256i packed =
        2 * p + 1 < groups ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * p))
                           : _mm256_zextsi128_si256(
                                 _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 32 * p)));
    const __m256i lo = _mm256_and_si256(packed, low);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
    const __m512i nibbles = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    const __m512 wscale = _mm512_permutexvar_ps(
        pattern, _mm512_castps128_ps512(
                     _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(sw + 2 * p)))));
    for (int i = 0; i < M; ++i) {
      const __m512i xq = _mm512_loadu_si512(x.q.data() + ((i0 + i) * pairs + p) * 64);
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), nibbles, xq);
      const __m512 xs = _mm512_loadu_ps(x.lane_scales.data() + ((i0 + i) * pairs + p) * 16);
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(wscale, xs), acc[i]);
    }
  }
  for (int i = 0; i < M; ++i) {
    __m512 off = _mm512_setzero_ps();
    const float* xo = x.offsets.data() + (i0 + i) * padded;
    for (int64_t g = 0; g < padded; g += 16) {
      off = _mm512_fmadd_ps(_mm512_load_ps(sw + g), _mm512_loadu_ps(xo + g), off);
    }
    y[(i0 + i) * ldy + j] = HorizontalSum(acc[i]) - HorizontalSum(off);
  }
}

template <int M>
MOE_VNNI void Rows(const Int8Rows& x, const WeightMatrix& w, int64_t j0, int64_t j1, int64_t i0,
                   float* y, int64_t ldy) {
  for (int64_t j = j0; j < j1; ++j) Row<M>(x, w, j, i0, y, ldy);
}

// v * inv rounded to nearest even, clamped to +-127, as int32 lanes.
MOE_VNNI inline __m512i RoundToInt8(__m512 v, __m512 inv) {
  const __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
  return _mm512_max_epi32(_mm512_min_epi32(r, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
}

// Row i of x, group g (32 floats at xg) into the layout of Int8Rows (see the header).
MOE_VNNI void QuantizeGroup(const float* xg, int64_t g, int8_t* q, float* lane_scales,
                            float* offset) {
  const __m512 lo = _mm512_loadu_ps(xg), hi = _mm512_loadu_ps(xg + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
  const float scale = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
  // Even columns, then odd ones.
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512i qe = RoundToInt8(_mm512_permutex2var_ps(lo, even, hi), vinv);
  const __m512i qo = RoundToInt8(_mm512_permutex2var_ps(lo, odd, hi), vinv);
  // Group g is half `h` of its pair: even columns at bytes 16h.., odd ones at 32 + 16h..
  const int64_t h = g % 2;
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * h), _mm512_cvtepi32_epi8(qe));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 32 + 16 * h), _mm512_cvtepi32_epi8(qo));
  const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qe, qo));
  for (int64_t l = 0; l < 4; ++l) lane_scales[4 * h + l] = lane_scales[8 + 4 * h + l] = scale;
  *offset = 8.0f * scale * static_cast<float>(sum);
}

}  // namespace

bool HasInt8DotProducts() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512vnni");
  return has;
}

bool Int4Int8Serves(const WeightMatrix& w) {
  return w.format == WeightFormat::kInt4Group && w.group_size == kGroup && w.cols % kGroup == 0 &&
         w.cols / kGroup <= kMaxGroups && HasInt8DotProducts();
}

void QuantizeRowsInt8(int64_t m, const float* x, int64_t ldx, int64_t k, Int8Rows* out) {
  MOE_CHECK(k % kGroup == 0 && HasInt8DotProducts());
  const int64_t groups = k / kGroup, pairs = Pairs(k), padded = PaddedGroups(k);
  out->m = m;
  out->k = k;
  out->q.assign(static_cast<size_t>(m * pairs * 64), 0);
  out->lane_scales.assign(static_cast<size_t>(m * pairs * 16), 0.0f);
  out->offsets.assign(static_cast<size_t>(m * padded), 0.0f);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t at = i * pairs + g / 2;
      QuantizeGroup(x + i * ldx + g * kGroup, g, out->q.data() + at * 64,
                    out->lane_scales.data() + at * 16,
                    &out->offsets[static_cast<size_t>(i * padded + g)]);
    }
  }
}

void Int4Int8Product(const Int8Rows& x, const WeightMatrix& w, int64_t j0, int64_t j1, float* y,
                     int64_t ldy) {
  MOE_CHECK(Int4Int8Serves(w) && x.k == w.cols && x.m >= 1);
  using RowsFn =
      void (*)(const Int8Rows&, const WeightMatrix&, int64_t, int64_t, int64_t, float*, int64_t);
  static constexpr RowsFn kRows[] = {Rows<1>, Rows<2>, Rows<3>, Rows<4>,
                                     Rows<5>, Rows<6>, Rows<7>, Rows<8>};
  static_assert(std::size(kRows) == kRowsPerPass);
  for (int64_t i0 = 0; i0 < x.m; i0 += kRowsPerPass) {
    const int64_t rows = std::min<int64_t>(kRowsPerPass, x.m - i0);
    kRows[rows - 1](x, w, j0, j1, i0, y, ldy);
  }
}

}  // namespace moe::cpu
