// Highway compiles the part between HWY_BEFORE_NAMESPACE and HWY_AFTER_NAMESPACE once per SIMD
// target (this file includes itself through foreach_target.h); the dispatching code at the end
// is compiled once.
#include "kernels/cpu/weight_matmul.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/dtype.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "kernels/cpu/bf16_product.h"
#include "kernels/cpu/int4_int8_product.h"
#include "kernels/cpu/ops.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/weight_matmul.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace moe::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// At most 16 lanes: an int4 chunk of 32 columns is 16 bytes, decoded as whole vectors.
using D = hn::CappedTag<float, 16>;
using V = hn::Vec<D>;

// Each format decodes N consecutive columns of one row, in the kernel's column order, times a
// scale that is constant over a segment of columns (the whole row for plain formats).
//
// int4's kernel order: within each 32-column chunk (16 bytes), first the 16 low nibbles (the
// even columns), then the 16 high nibbles (the odd columns). x is permuted the same way, so a
// dot product is unchanged.

// Segment(w): columns per scale; FirstSegment(w): columns of the first one (a window may start
// inside an fp8 block). RowScales(w, r): row r's scales, found once per row (the divisions are
// costly next to a 128-column block's work); Scale(row_scales, s): segment s's.

// The segment functions of a format without scales: the whole row is one segment of scale 1.
// kBits: bits a weight takes in the row (0: not prefetched by FusedRow).
struct Unscaled {
  static constexpr int kBits = 0;
  static int64_t Segment(const WeightMatrix& w) { return w.cols; }
  static int64_t FirstSegment(const WeightMatrix& w) { return w.cols; }
  static const uint8_t* RowScales(const WeightMatrix&, int64_t) { return nullptr; }
  static float Scale(const uint8_t*, int64_t) { return 1.0f; }
};

struct F16Format : Unscaled {
  static constexpr int kBits = 16;
  static V Load(D d, const uint8_t* row, int64_t c, V) {
    const hn::Rebind<hwy::float16_t, D> d16;
    return hn::PromoteTo(d, hn::LoadU(d16, reinterpret_cast<const hwy::float16_t*>(row) + c));
  }
  static float Scalar(const uint8_t* row, int64_t c, float) {
    uint16_t v;
    std::memcpy(&v, row + 2 * c, 2);
    return F16ToF32(v);
  }
};

struct Bf16Format : Unscaled {
  static constexpr int kBits = 16;
  static V Load(D d, const uint8_t* row, int64_t c, V) {
    const hn::Rebind<uint16_t, D> d16;
    const hn::RebindToUnsigned<D> du;
    const auto bits = hn::PromoteTo(du, hn::LoadU(d16, reinterpret_cast<const uint16_t*>(row) + c));
    return hn::BitCast(d, hn::ShiftLeft<16>(bits));
  }
  static float Scalar(const uint8_t* row, int64_t c, float) {
    uint16_t v;
    std::memcpy(&v, row + 2 * c, 2);
    return BF16ToF32(v);
  }
};

// The float32 scale of fp8 segment `seg` of a row.
inline float ScaleOf(const uint8_t* row_scales, int64_t seg) {
  float s;
  std::memcpy(&s, row_scales + 4 * seg, 4);
  return s;
}

// e4m3 bytes without their scales: sign to bit 31, exponent and mantissa to bits 20..26 give a
// float32 equal to the value times 2^-120 (normal and subnormal alike). The byte is
// sign-extended, so one shift puts the sign in bit 31 and one mask clears bits 27..30.
// Checkpoints hold no NaN codes (quantizers saturate), so 0x7f/0xff are not special-cased. The
// fused product uses it as it is: the rows of one 128-row block share their column blocks'
// scales, so x is multiplied by them once (FusedRowsF8) and the weights are only decoded.
struct F8UnscaledFormat : Unscaled {
  static constexpr int kBits = 8;
  static constexpr uint32_t kMask = 0x87f00000u;
  static V Load(D d, const uint8_t* row, int64_t c, V) {
    const hn::Rebind<int8_t, D> d8;
    const hn::RebindToSigned<D> di;
    const auto b = hn::PromoteTo(di, hn::LoadU(d8, reinterpret_cast<const int8_t*>(row) + c));
    return hn::BitCast(d, hn::And(hn::ShiftLeft<20>(b), hn::Set(di, static_cast<int32_t>(kMask))));
  }
  static float Scalar(const uint8_t* row, int64_t c, float) {
    const uint32_t b = row[c];
    const uint32_t bits = ((b & 0x80u) << 24) | ((b & 0x7fu) << 20);
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
};

// fp8 with DeepSeek-V3's block scales: the unscaled decode times the block's scale, with 2^120
// folded into it.
struct F8BlockFormat {
  static constexpr int kBits = 8;
  static constexpr float kExpBias = 1.329228e36f;  // 2^120
  static int64_t Segment(const WeightMatrix& w) { return w.block_cols; }
  static int64_t FirstSegment(const WeightMatrix& w) { return w.FirstBlockCols(); }
  static const uint8_t* RowScales(const WeightMatrix& w, int64_t r) {
    return reinterpret_cast<const uint8_t*>(w.BlockScalesOfRow(r));
  }
  static float Scale(const uint8_t* row_scales, int64_t seg) {
    return ScaleOf(row_scales, seg) * kExpBias;
  }
  static V Load(D d, const uint8_t* row, int64_t c, V scale) {
    return hn::Mul(F8UnscaledFormat::Load(d, row, c, scale), scale);
  }
  static float Scalar(const uint8_t* row, int64_t c, float scale) {
    return F8UnscaledFormat::Scalar(row, c, scale) * scale;
  }
};

struct Int4GroupFormat {
  static constexpr int kBits = 4;
  static int64_t Segment(const WeightMatrix& w) { return w.group_size; }
  static int64_t FirstSegment(const WeightMatrix& w) { return w.group_size; }  // whole groups
  static const uint8_t* RowScales(const WeightMatrix& w, int64_t r) {
    return reinterpret_cast<const uint8_t*>(w.group_scales + r * w.scale_stride);
  }
  static float Scale(const uint8_t* row_scales, int64_t seg) {
    uint16_t s;
    std::memcpy(&s, row_scales + 2 * seg, 2);
    return BF16ToF32(s);
  }
  static V Load(D d, const uint8_t* row, int64_t c, V scale) {
    const hn::Rebind<uint8_t, D> d8;
    const hn::RebindToUnsigned<D> du;
    const hn::RebindToSigned<D> di;
    const int64_t in_chunk = c & 31;
    const auto b = hn::PromoteTo(du, hn::LoadU(d8, row + (c >> 5) * 16 + (in_chunk & 15)));
    const auto q = in_chunk < 16 ? hn::And(b, hn::Set(du, 0xfu)) : hn::ShiftRight<4>(b);
    const V qf = hn::ConvertTo(d, hn::BitCast(di, q));
    return hn::Mul(hn::Sub(qf, hn::Set(d, 8.0f)), scale);
  }
  static float Scalar(const uint8_t* row, int64_t c, float scale) {
    const int64_t in_chunk = c & 31;
    const uint8_t b = row[(c >> 5) * 16 + (in_chunk & 15)];
    const int q = in_chunk < 16 ? (b & 0xf) : (b >> 4);
    return static_cast<float>(q - 8) * scale;
  }
};

// Accumulators per row of x: with fewer than four rows, consecutive vectors of a weight row go to
// separate accumulators so that enough FMAs are in flight. (Taking several weight rows side by
// side instead makes short interleaved streams that run slower from memory.)
template <int M>
constexpr int Unroll() {
  return M == 1 ? 4 : (M == 2 ? 2 : 1);
}

// y[i * ldy + j] = sum_c x[i * ldx + c] * W[j, c] for i < M. x in kernel order.
template <int M, class F>
void FusedRow(const float* x, int64_t ldx, const WeightMatrix& w, int64_t j, float* y,
              int64_t ldy) {
  constexpr int U = Unroll<M>();
  const D d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t seg = F::Segment(w), k = w.cols;
  const uint8_t* row = w.data + j * w.row_stride;
  const uint8_t* row_scales = F::RowScales(w, j);
  V acc[U][M];
  for (int u = 0; u < U; ++u) {
    for (int i = 0; i < M; ++i) acc[u][i] = hn::Zero(d);
  }
  float tail[M] = {};
  int64_t s0 = 0, s1 = std::min(k, F::FirstSegment(w));
  for (int64_t s = 0; s0 < k; ++s, s0 = s1, s1 = std::min(k, s1 + seg)) {
    const float scale = F::Scale(row_scales, s);
    const V sv = hn::Set(d, scale);
    int64_t c = s0;
    for (; c + U * N <= s1; c += U * N) {
      if constexpr (F::kBits > 0) {
        for (int64_t b = 0; b < U * N * F::kBits / 8; b += 64) {
          PrefetchWeights<M>(row + c * F::kBits / 8 + b + kWeightPrefetchBytes);
        }
      }
      for (int u = 0; u < U; ++u) {
        const V wv = F::Load(d, row, c + u * N, sv);
        for (int i = 0; i < M; ++i) {
          acc[u][i] = hn::MulAdd(wv, hn::LoadU(d, x + i * ldx + c + u * N), acc[u][i]);
        }
      }
    }
    for (; c + N <= s1; c += N) {
      const V wv = F::Load(d, row, c, sv);
      for (int i = 0; i < M; ++i) acc[0][i] = hn::MulAdd(wv, hn::LoadU(d, x + i * ldx + c), acc[0][i]);
    }
    for (; c < s1; ++c) {
      const float wc = F::Scalar(row, c, scale);
      for (int i = 0; i < M; ++i) tail[i] += wc * x[i * ldx + c];
    }
  }
  for (int i = 0; i < M; ++i) {
    V sum = acc[0][i];
    for (int u = 1; u < U; ++u) sum = hn::Add(sum, acc[u][i]);
    y[i * ldy + j] = hn::GetLane(hn::SumOfLanes(d, sum)) + tail[i];
  }
}

// FusedRow for int4, two 32-column chunks (two groups or one) per step: each 16-byte chunk is
// loaded once and gives its low-nibble and high-nibble vectors, four weight vectors per step for
// four accumulators (x in kernel order). The columns are a whole number of 32-column chunks.
template <int M>
void FusedRowInt4(const float* x, int64_t ldx, const WeightMatrix& w, int64_t j, float* y,
                  int64_t ldy) {
  constexpr int U = Unroll<M>();
  const D d;
  const hn::Rebind<uint8_t, D> d8;
  const hn::RebindToUnsigned<D> du;
  const hn::RebindToSigned<D> di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t k = w.cols;
  const uint8_t* row = w.data + j * w.row_stride;
  const uint8_t* row_scales = Int4GroupFormat::RowScales(w, j);
  V acc[U][M];
  for (int u = 0; u < U; ++u) {
    for (int i = 0; i < M; ++i) acc[u][i] = hn::Zero(d);
  }
  const auto low = hn::Set(du, 0xfu);
  // A group's decode of a stored nibble n (the weight is (n - 8) * s): with 16 lanes, a lookup in
  // the group's table of the 16 values; otherwise n converted, times s, minus 8 s. Both are exact
  // (small integers times a bf16 scale), so both give the same weights.
  constexpr bool kTable = hn::MaxLanes(D()) == 16;
  struct Group {
    V a, b;  // kTable: the table; otherwise s and -8 s
  };
  const V n_minus_8 = hn::Sub(hn::Iota(d, 0.0f), hn::Set(d, 8.0f));
  auto group = [&](float s) {
    if constexpr (kTable) {
      return Group{hn::Mul(n_minus_8, hn::Set(d, s)), hn::Zero(d)};
    } else {
      return Group{hn::Set(d, s), hn::Set(d, -8.0f * s)};
    }
  };
  auto decode = [&](auto n, const Group& g) {
    if constexpr (kTable) {
      return hn::TableLookupLanes(g.a, hn::IndicesFromVec(d, n));
    } else {
      return hn::MulAdd(hn::ConvertTo(d, hn::BitCast(di, n)), g.a, g.b);
    }
  };
  auto fma = [&](int u, V wv, int64_t col) {
    for (int i = 0; i < M; ++i) acc[u][i] = hn::MulAdd(wv, hn::LoadU(d, x + i * ldx + col), acc[u][i]);
  };
  // The group of column c, by a shift for the usual power-of-two group sizes (a 64-bit division
  // per 32 columns was the kernel's largest cost).
  const int64_t gs = w.group_size;
  const bool pow2 = (gs & (gs - 1)) == 0;
  const int shift = pow2 ? hwy::Num0BitsBelowLS1Bit_Nonzero64(static_cast<uint64_t>(gs)) : -1;
  auto GroupOf = [&](int64_t col) { return shift >= 0 ? col >> shift : col / gs; };
  int64_t c = 0;
  for (; c + 64 <= k; c += 64) {
    if ((c & 127) == 0) PrefetchWeights<M>(row + c / 2 + kWeightPrefetchBytes);
    const float sa = Int4GroupFormat::Scale(row_scales, GroupOf(c));
    const float sb = Int4GroupFormat::Scale(row_scales, GroupOf(c + 32));
    const Group ga = group(sa), gb = group(sb);
    for (int64_t o = 0; o < 16; o += N) {
      const auto ba = hn::PromoteTo(du, hn::LoadU(d8, row + c / 2 + o));
      const auto bb = hn::PromoteTo(du, hn::LoadU(d8, row + c / 2 + 16 + o));
      fma(0, decode(hn::And(ba, low), ga), c + o);
      fma(1 % U, decode(hn::ShiftRight<4>(ba), ga), c + 16 + o);
      fma(2 % U, decode(hn::And(bb, low), gb), c + 32 + o);
      fma(3 % U, decode(hn::ShiftRight<4>(bb), gb), c + 48 + o);
    }
  }
  if (c < k) {  // one last 32-column chunk
    const float sa = Int4GroupFormat::Scale(row_scales, GroupOf(c));
    const Group ga = group(sa);
    for (int64_t o = 0; o < 16; o += N) {
      const auto ba = hn::PromoteTo(du, hn::LoadU(d8, row + c / 2 + o));
      fma(0, decode(hn::And(ba, low), ga), c + o);
      fma(1 % U, decode(hn::ShiftRight<4>(ba), ga), c + 16 + o);
    }
  }
  for (int i = 0; i < M; ++i) {
    V sum = acc[0][i];
    for (int u = 1; u < U; ++u) sum = hn::Add(sum, acc[u][i]);
    y[i * ldy + j] = hn::GetLane(hn::SumOfLanes(d, sum));
  }
}

// FusedRow over fp8 rows [j0, j1): for each run of rows in one 128-row block, x times the
// block's column scales, then the unscaled weights (the values times 2^-120) against it. The
// 2^120 is split between x (2^64) and the sums (2^56), so x keeps the float32 range for
// |x * scale| < 2^64 and products keep full precision down to |x * scale * w| of 2^-70.
template <int M>
void FusedRowsF8(const float* x, int64_t ldx, const WeightMatrix& w, int64_t j0, int64_t j1,
                 float* y, int64_t ldy) {
  const int64_t k = w.cols;
  thread_local FloatVector xs;
  if (xs.size() < static_cast<size_t>(M * k)) xs.resize(static_cast<size_t>(M * k));
  for (int64_t j = j0; j < j1;) {
    const int64_t block_end = ((j + w.row0) / w.block_rows + 1) * w.block_rows - w.row0;
    const uint8_t* row_scales = F8BlockFormat::RowScales(w, j);
    int64_t s0 = 0, s1 = std::min(k, F8BlockFormat::FirstSegment(w));
    for (int64_t s = 0; s0 < k; ++s, s0 = s1, s1 = std::min(k, s1 + w.block_cols)) {
      const float scale = ScaleOf(row_scales, s) * 0x1p64f;
      for (int i = 0; i < M; ++i) {
        for (int64_t c = s0; c < s1; ++c) xs[i * k + c] = x[i * ldx + c] * scale;
      }
    }
    for (const int64_t end = std::min(j1, block_end); j < end; ++j) {
      FusedRow<M, F8UnscaledFormat>(xs.data(), k, w, j, y, ldy);
      for (int i = 0; i < M; ++i) y[i * ldy + j] *= 0x1p56f;
    }
  }
}

template <int M, class F>
void FusedRowsT(const float* x, int64_t ldx, const WeightMatrix& w, int64_t j0, int64_t j1,
                float* y, int64_t ldy) {
  if constexpr (std::is_same_v<F, F8BlockFormat>) {
    return FusedRowsF8<M>(x, ldx, w, j0, j1, y, ldy);
  }
  for (int64_t j = j0; j < j1; ++j) {
    if constexpr (std::is_same_v<F, Int4GroupFormat>) {
      FusedRowInt4<M>(x, ldx, w, j, y, ldy);
    } else {
      FusedRow<M, F>(x, ldx, w, j, y, ldy);
    }
  }
}

template <class F>
void FusedRowsF(int64_t m, const float* x, int64_t ldx, const WeightMatrix& w, int64_t j0,
                int64_t j1, float* y, int64_t ldy) {
  switch (m) {
    case 1: return FusedRowsT<1, F>(x, ldx, w, j0, j1, y, ldy);
    case 2: return FusedRowsT<2, F>(x, ldx, w, j0, j1, y, ldy);
    case 3: return FusedRowsT<3, F>(x, ldx, w, j0, j1, y, ldy);
    case 4: return FusedRowsT<4, F>(x, ldx, w, j0, j1, y, ldy);
    case 5: return FusedRowsT<5, F>(x, ldx, w, j0, j1, y, ldy);
    case 6: return FusedRowsT<6, F>(x, ldx, w, j0, j1, y, ldy);
    case 7: return FusedRowsT<7, F>(x, ldx, w, j0, j1, y, ldy);
    default: return FusedRowsT<8, F>(x, ldx, w, j0, j1, y, ldy);
  }
}

void FusedRows(int64_t m, const float* x, int64_t ldx, const WeightMatrix& w, int64_t j0,
               int64_t j1, float* y, int64_t ldy) {
  switch (w.format) {
    case WeightFormat::kBF16: return FusedRowsF<Bf16Format>(m, x, ldx, w, j0, j1, y, ldy);
    case WeightFormat::kF16: return FusedRowsF<F16Format>(m, x, ldx, w, j0, j1, y, ldy);
    case WeightFormat::kF8Block: return FusedRowsF<F8BlockFormat>(m, x, ldx, w, j0, j1, y, ldy);
    case WeightFormat::kInt4Group:
      return FusedRowsF<Int4GroupFormat>(m, x, ldx, w, j0, j1, y, ldy);
    case WeightFormat::kF32: break;  // BLAS
  }
}

template <class F>
void DecodeRowsF(const WeightMatrix& w, int64_t r0, int64_t r1, float* dst) {
  const D d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t seg = F::Segment(w), k = w.cols;
  for (int64_t r = r0; r < r1; ++r, dst += k) {
    const uint8_t* row = w.data + r * w.row_stride;
    const uint8_t* row_scales = F::RowScales(w, r);
    int64_t s0 = 0, s1 = std::min(k, F::FirstSegment(w));
    for (int64_t s = 0; s0 < k; ++s, s0 = s1, s1 = std::min(k, s1 + seg)) {
      const float scale = F::Scale(row_scales, s);
      const V sv = hn::Set(d, scale);
      int64_t c = s0;
      for (; c + N <= s1; c += N) hn::StoreU(F::Load(d, row, c, sv), d, dst + c);
      for (; c < s1; ++c) dst[c] = F::Scalar(row, c, scale);
    }
  }
}

// Rows [r0, r1) of w as float32 in the kernel's column order.
void DecodeRows(const WeightMatrix& w, int64_t r0, int64_t r1, float* dst) {
  switch (w.format) {
    case WeightFormat::kBF16: return DecodeRowsF<Bf16Format>(w, r0, r1, dst);
    case WeightFormat::kF16: return DecodeRowsF<F16Format>(w, r0, r1, dst);
    case WeightFormat::kF8Block: return DecodeRowsF<F8BlockFormat>(w, r0, r1, dst);
    case WeightFormat::kInt4Group: return DecodeRowsF<Int4GroupFormat>(w, r0, r1, dst);
    case WeightFormat::kF32:
      for (int64_t r = r0; r < r1; ++r, dst += w.cols) {
        std::memcpy(dst, w.data + r * w.row_stride, static_cast<size_t>(w.cols) * 4);
      }
      return;
  }
}

int64_t Target() { return HWY_TARGET; }

}  // namespace HWY_NAMESPACE
}  // namespace moe::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace moe::cpu {
HWY_EXPORT(FusedRows);
HWY_EXPORT(DecodeRows);
HWY_EXPORT(Target);

namespace {

// Decoded panels hold up to this many floats (16 MB): a whole expert of DeepSeek-V3 at
// 2048 x 7168 is a few panels, so each BLAS call is large and x is packed few times.
constexpr int64_t kPanelFloats = 4 << 20;

// Weight rows per decoded panel: as many as kPanelFloats holds, but on the threads' own (outside
// a parallel region) at least two panels per thread.
int64_t PanelRows(int64_t n, int64_t k) {
  int64_t rows = std::max<int64_t>(16, kPanelFloats / std::max<int64_t>(k, 1));
  if (!omp_in_parallel()) {
    const int64_t per_thread = (n + 2 * NumThreads() - 1) / (2 * NumThreads());
    rows = std::min(rows, std::max<int64_t>(16, per_thread));
  }
  return std::min(rows, n);
}

// f(j0, j1) over the output features [0, n): one contiguous range per thread, cut at multiples
// of kFusedRowsPerTask (the whole range on the calling thread inside a parallel region), so what
// a kernel does once per range (fp8's scaled x, a row block's scales) is done once per thread.
template <class F>
void ForEachFusedRange(int64_t n, const F& f) {
  const int64_t tasks = (n + kFusedRowsPerTask - 1) / kFusedRowsPerTask;
  const int threads = static_cast<int>(std::min<int64_t>(NumThreads(), tasks));
  if (omp_in_parallel() || threads <= 1) {
    f(0, n);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int t = 0; t < threads; ++t) {
    const RowRange r = FusedRowsOfThread(n, t, threads);
    f(r.begin, r.end);
  }
}

// f over a range in tasks of kFusedRowsPerTask, for the products that pass over a task's weights
// once per few rows of x (the task's weights stay in cache between the passes).
template <class F>
auto InTasks(const F& f) {
  return [&f](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; j += kFusedRowsPerTask) f(j, std::min(j1, j + kFusedRowsPerTask));
  };
}

bool InKernelOrder(const WeightMatrix& w) { return w.format != WeightFormat::kInt4Group; }

// x [m, k] in the kernel's column order (int4 only permutes; see Int4GroupFormat).
void PermuteForInt4(int64_t m, const float* x, int64_t ldx, int64_t k, float* out) {
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * ldx;
    float* oi = out + i * k;
    for (int64_t c0 = 0; c0 < k; c0 += 32) {
      for (int64_t t = 0; t < 16; ++t) {
        oi[c0 + t] = xi[c0 + 2 * t];
        oi[c0 + 16 + t] = xi[c0 + 2 * t + 1];
      }
    }
  }
}

}  // namespace

void MatMulNT(int64_t m, const float* x, int64_t ldx, const WeightMatrix& w, float* y,
              int64_t ldy) {
  const int64_t n = w.rows, k = w.cols;
  if (m == 0 || n == 0) return;
  if (w.format == WeightFormat::kF32) {
    cpu::MatMulNT(m, n, k, x, ldx, reinterpret_cast<const float*>(w.data), w.row_stride / 4, y,
                  ldy);
    return;
  }
  if (w.x_rounding == Activations::kBf16 && Bf16Serves(w)) {
    thread_local Bf16Rows rounded;  // the calling thread's; the team reads it through xb
    const Bf16Rows& xb = rounded;
    RoundRowsBf16(m, x, ldx, k, Bf16Factor(w), &rounded);
    ForEachFusedRange(n,
                      InTasks([&](int64_t j0, int64_t j1) { Bf16Product(xb, w, j0, j1, y, ldy); }));
    return;
  }
  if (w.x_rounding == Activations::kInt8 && Int4Int8Serves(w)) {
    thread_local Int8Rows rounded;  // the calling thread's; the team reads it through xq
    const Int8Rows& xq = rounded;
    QuantizeRowsInt8(m, x, ldx, k, &rounded);
    ForEachFusedRange(
        n, InTasks([&](int64_t j0, int64_t j1) { Int4Int8Product(xq, w, j0, j1, y, ldy); }));
    return;
  }
  FloatVector permuted;
  if (!InKernelOrder(w)) {
    MOE_CHECK(k % 32 == 0);
    permuted.resize(static_cast<size_t>(m * k));
    PermuteForInt4(m, x, ldx, k, permuted.data());
    x = permuted.data();
    ldx = k;
  }
  if (m <= kFusedMaxRows) {
    const auto fused = HWY_DYNAMIC_DISPATCH(FusedRows);
    ForEachFusedRange(n, [&](int64_t j0, int64_t j1) { fused(m, x, ldx, w, j0, j1, y, ldy); });
    return;
  }
  const auto decode = HWY_DYNAMIC_DISPATCH(DecodeRows);
  const int64_t panel_rows = PanelRows(n, k);
  const int64_t panels = (n + panel_rows - 1) / panel_rows;
#pragma omp parallel
  {
    FloatVector panel(static_cast<size_t>(panel_rows * k));
#pragma omp for schedule(dynamic)
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t j0 = p * panel_rows, rows = std::min(n, j0 + panel_rows) - j0;
      decode(w, j0, j0 + rows, panel.data());
      // Inside the parallel region BLAS runs on this thread.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                  static_cast<int>(rows), static_cast<int>(k), 1.0f, x, static_cast<int>(ldx),
                  panel.data(), static_cast<int>(k), 0.0f, y + j0, static_cast<int>(ldy));
    }
  }
}

void DequantizeRows(const WeightMatrix& w, int64_t r0, int64_t r1, float* dst) {
  if (r1 <= r0) return;
  const int64_t k = w.cols;
  const auto decode = HWY_DYNAMIC_DISPATCH(DecodeRows);
  if (InKernelOrder(w)) {
    decode(w, r0, r1, dst);
    return;
  }
  float chunk[32];
  for (int64_t r = r0; r < r1; ++r, dst += k) {
    decode(w, r, r + 1, dst);
    for (int64_t c0 = 0; c0 < k; c0 += 32) {
      std::memcpy(chunk, dst + c0, sizeof(chunk));
      for (int64_t t = 0; t < 16; ++t) {
        dst[c0 + 2 * t] = chunk[t];
        dst[c0 + 2 * t + 1] = chunk[16 + t];
      }
    }
  }
}

const char* WeightKernelTarget() { return hwy::TargetName(HWY_DYNAMIC_DISPATCH(Target)()); }

}  // namespace moe::cpu
#endif  // HWY_ONCE
