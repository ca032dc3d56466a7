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

// Rows i < M of y for weight row j.
template <int M>
MOE_VNNI void Row(const Int8Rows& x, const WeightMatrix& w, int64_t j, float* y, int64_t ldy) {
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
      const __m512i xq = _mm512_loadu_si512(x.q.data() + (i * pairs + p) * 64);
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), nibbles, xq);
      const __m512 xs = _mm512_loadu_ps(x.lane_scales.data() + (i * pairs + p) * 16);
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(wscale, xs), acc[i]);
    }
  }
  for (int i = 0; i < M; ++i) {
    __m512 off = _mm512_setzero_ps();
    const float* xo = x.offsets.data() + i * padded;
    for (int64_t g = 0; g < padded; g += 16) {
      off = _mm512_fmadd_ps(_mm512_load_ps(sw + g), _mm512_loadu_ps(xo + g), off);
    }
    y[i * ldy + j] = HorizontalSum(acc[i]) - HorizontalSum(off);
  }
}

template <int M>
MOE_VNNI void Rows(const Int8Rows& x, const WeightMatrix& w, int64_t j0, int64_t j1, float* y,
                   int64_t ldy) {
  for (int64_t j = j0; j < j1; ++j) Row<M>(x, w, j, y, ldy);
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
  MOE_CHECK(k % kGroup == 0);
  const int64_t groups = k / kGroup, pairs = Pairs(k), padded = PaddedGroups(k);
  out->m = m;
  out->k = k;
  out->q.assign(static_cast<size_t>(m * pairs * 64), 0);
  out->lane_scales.assign(static_cast<size_t>(m * pairs * 16), 0.0f);
  out->offsets.assign(static_cast<size_t>(m * padded), 0.0f);
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * ldx;
    for (int64_t g = 0; g < groups; ++g) {
      const float* xg = xi + g * kGroup;
      float amax = 0.0f;
      for (int64_t c = 0; c < kGroup; ++c) amax = std::max(amax, std::abs(xg[c]));
      const float scale = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
      // Group g is half `h` of pair p: its even columns at bytes 16h.., its odd ones at 32 + 16h..
      const int64_t p = g / 2, h = g % 2;
      int8_t* q = out->q.data() + (i * pairs + p) * 64;
      int32_t sum = 0;
      for (int64_t e = 0; e < 16; ++e) {
        const auto round = [&](float v) {
          return static_cast<int8_t>(std::clamp(std::nearbyint(v * inv), -127.0f, 127.0f));
        };
        q[16 * h + e] = round(xg[2 * e]);
        q[32 + 16 * h + e] = round(xg[2 * e + 1]);
        sum += q[16 * h + e] + q[32 + 16 * h + e];
      }
      float* ls = out->lane_scales.data() + (i * pairs + p) * 16;
      for (int64_t l = 0; l < 4; ++l) ls[4 * h + l] = ls[8 + 4 * h + l] = scale;
      out->offsets[static_cast<size_t>(i * padded + g)] = 8.0f * scale * static_cast<float>(sum);
    }
  }
}

void Int4Int8Product(const Int8Rows& x, const WeightMatrix& w, int64_t j0, int64_t j1, float* y,
                     int64_t ldy) {
  MOE_CHECK(Int4Int8Serves(w) && x.k == w.cols && x.m >= 1 && x.m <= kFusedMaxRows);
  using RowsFn = void (*)(const Int8Rows&, const WeightMatrix&, int64_t, int64_t, float*, int64_t);
  static constexpr RowsFn kRows[] = {Rows<1>, Rows<2>, Rows<3>, Rows<4>,
                                     Rows<5>, Rows<6>, Rows<7>, Rows<8>};
  static_assert(std::size(kRows) == kFusedMaxRows);
  kRows[x.m - 1](x, w, j0, j1, y, ldy);
}

}  // namespace moe::cpu
