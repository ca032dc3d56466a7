// The compact-weight kernels against a double-precision product with weights dequantized here,
// element by element, from each format's definition (common/dtype.h conversions, the int4 words
// read as int32 nibbles) — not through the kernels' own decoders. Every SIMD target this CPU can
// run (of those compiled: AVX-512, AVX2, SSE4, SSSE3, scalar) is checked, not only the one the
// dispatcher would pick.
#include "kernels/cpu/weight_matmul.h"

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "hwy/targets.h"
#include "kernels/cpu/bf16_product.h"
#include "kernels/cpu/int4_int8_product.h"
#include "tests/kernels/stored_weight.h"

namespace moe::cpu {
namespace {

struct Case {
  WeightFormat format;
  int64_t R, C, r0, rows, c0, cols;
};

// `x_scale`: the activations' magnitude.
void CheckProducts(const Case& p, float x_scale = 1.0f) {
  const Stored s = MakeStored(p.format, p.R, p.C, 7);
  const WeightMatrix w = Window(p.format, s, p.r0, p.rows, p.c0, p.cols);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, x_scale);
  for (int64_t m : {1, 2, 3, 5, 8, 9, 40}) {
    const int64_t ldx = p.cols + 3, ldy = p.rows + 5;
    std::vector<float> x(static_cast<size_t>(m * ldx));
    for (float& v : x) v = normal(rng);
    std::vector<float> y(static_cast<size_t>(m * ldy), -7.0f);
    MatMulNT(m, x.data(), ldx, w, y.data(), ldy);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < p.rows; ++j) {
        double want = 0, mag = 0;
        for (int64_t c = 0; c < p.cols; ++c) {
          const double wv = s.dense[(p.r0 + j) * p.C + p.c0 + c];
          want += x[i * ldx + c] * wv;
          mag += std::abs(x[i * ldx + c] * wv);
        }
        ASSERT_NEAR(y[i * ldy + j], want, 1e-5 * mag + 1e-30)
            << WeightFormatName(p.format) << " m=" << m << " row " << i << " col " << j;
      }
      // Columns past the window in a row of y are left alone.
      for (int64_t j = p.rows; j < ldy; ++j) ASSERT_EQ(y[i * ldy + j], -7.0f);
    }
  }
}

void CheckDequantize(const Case& p) {
  const Stored s = MakeStored(p.format, p.R, p.C, 9);
  const WeightMatrix w = Window(p.format, s, p.r0, p.rows, p.c0, p.cols);
  std::vector<float> out(static_cast<size_t>(2 * p.cols));
  for (int64_t r = 0; r + 2 <= p.rows; r += 2) {
    DequantizeRows(w, r, r + 2, out.data());
    for (int64_t i = 0; i < 2; ++i) {
      for (int64_t c = 0; c < p.cols; ++c) {
        const double want = s.dense[(p.r0 + r + i) * p.C + p.c0 + c];
        ASSERT_NEAR(out[i * p.cols + c], want, 1e-7 * std::abs(want)) << r + i << "," << c;
      }
    }
  }
}

class WeightMatMulTest : public ::testing::TestWithParam<Case> {};

// Runs `body` once per SIMD target the CPU supports, the dispatcher forced to it.
template <typename F>
void ForEachTarget(F body) {
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    ASSERT_STREQ(WeightKernelTarget(), hwy::TargetName(target));
    body();
  }
  hwy::SetSupportedTargetsForTest(0);
}

TEST_P(WeightMatMulTest, MatchesTheDequantizedProductForEveryRowCount) {
  const Case p = GetParam();
  ForEachTarget([&] { CheckProducts(p); });
}

TEST_P(WeightMatMulTest, DequantizeRowsGivesTheStoredValues) {
  const Case p = GetParam();
  ForEachTarget([&] { CheckDequantize(p); });
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return std::string(WeightFormatName(c.format)) + "_" + std::to_string(c.rows) + "x" +
         std::to_string(c.cols) + "_at_" + std::to_string(c.r0) + "_" + std::to_string(c.c0);
}

// Whole tensors, row windows (column-parallel shards), column windows (row-parallel shards), odd
// sizes that leave vector tails, fp8 blocks cut by the window's rows and columns.
INSTANTIATE_TEST_SUITE_P(
    Formats, WeightMatMulTest,
    ::testing::Values(Case{WeightFormat::kF32, 37, 70, 0, 37, 0, 70},
                      Case{WeightFormat::kF32, 40, 96, 5, 20, 32, 48},
                      Case{WeightFormat::kBF16, 37, 70, 0, 37, 0, 70},
                      Case{WeightFormat::kBF16, 64, 200, 3, 50, 8, 150},
                      Case{WeightFormat::kF16, 33, 45, 0, 33, 0, 45},
                      Case{WeightFormat::kF16, 40, 96, 1, 30, 16, 64},
                      Case{WeightFormat::kF8Block, 300, 300, 0, 300, 0, 300},
                      Case{WeightFormat::kF8Block, 300, 384, 70, 150, 128, 256},
                      Case{WeightFormat::kF8Block, 130, 200, 1, 128, 0, 200},
                      Case{WeightFormat::kF8Block, 64, 400, 0, 64, 100, 250},
                      Case{WeightFormat::kInt4Group, 37, 256, 0, 37, 0, 256},
                      Case{WeightFormat::kInt4Group, 40, 320, 7, 25, 96, 192},
                      Case{WeightFormat::kInt4Group, 20, 160, 0, 20, 0, 160}),
    CaseName);

// Large activations (here 1e6) with fp8 blocks: the products stay finite and right (a kernel that
// folded the block scales and the decode's 2^120 into x would overflow float32).
TEST(WeightMatMulLargeActivationsTest, Fp8ProductsStayFiniteAndRight) {
  ForEachTarget([&] {
    CheckProducts(Case{WeightFormat::kF8Block, 300, 384, 70, 150, 128, 256}, 1e6f);
  });
}

// Products of a window marked for rounded x (`rounding`) with 1 to 40 rows of x (several passes of
// 8, a partial last one; a group with a zero, one all zeros): equal, to float rounding, to the
// product of the weights with x rounded by `round_row` (computed here in double), but for the
// weights `may_drop` names, whose products are allowed as error; and within the rounding's own
// bound of the exact product.
void CheckRoundedProducts(
    const Case& p, Activations rounding,
    const std::function<std::vector<double>(const float*, int64_t)>& round_row,
    const std::function<bool(const Stored&, int64_t)>& may_drop) {
  const Stored s = MakeStored(p.format, p.R, p.C, 7);
  WeightMatrix w = Window(p.format, s, p.r0, p.rows, p.c0, p.cols);
  w.x_rounding = rounding;
  ASSERT_TRUE(rounding == Activations::kInt8 ? Int4Int8Serves(w) : Bf16Serves(w));
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t m : {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 23, 40}) {
    const int64_t ldx = p.cols + 3, ldy = p.rows + 5;
    std::vector<float> x(static_cast<size_t>(m * ldx));
    for (float& v : x) v = normal(rng);
    x[0] = 0.0f;
    if (p.cols >= 64) std::fill(x.begin() + 32, x.begin() + 64, 0.0f);
    std::vector<float> y(static_cast<size_t>(m * ldy), -7.0f);
    MatMulNT(m, x.data(), ldx, w, y.data(), ldy);
    for (int64_t i = 0; i < m; ++i) {
      const std::vector<double> xr = round_row(x.data() + i * ldx, p.cols);
      for (int64_t j = 0; j < p.rows; ++j) {
        double want = 0, exact = 0, mag = 0, bound = 0, dropped = 0;
        for (int64_t c = 0; c < p.cols; ++c) {
          const int64_t at = (p.r0 + j) * p.C + p.c0 + c;
          const double wv = s.dense[at], xv = x[i * ldx + c];
          want += xr[c] * wv;
          exact += xv * wv;
          mag += std::abs(xr[c] * wv);
          bound += std::abs(wv) * std::abs(xr[c] - xv);
          if (may_drop(s, at)) dropped += std::abs(xr[c] * wv);
        }
        ASSERT_NEAR(y[i * ldy + j], want, 1e-5 * mag + dropped + 1e-30)
            << WeightFormatName(p.format) << " m=" << m << " " << i << "," << j;
        ASSERT_LE(std::abs(y[i * ldy + j] - exact), bound + 1e-5 * mag + dropped) << "m=" << m;
      }
      for (int64_t j = p.rows; j < ldy; ++j) ASSERT_EQ(y[i * ldy + j], -7.0f);
    }
  }
}

// int4 products with x rounded to int8 per 32 columns (WeightMatrix::x_rounding kInt8), against x
// rounded as llama.cpp's Q8_0 rounds it (scale max |x| / 127 per group, round to nearest). Whole
// tensors, windows, an odd number of groups.
TEST(Int4Int8ProductTest, EqualsTheProductWithXRoundedPerGroup) {
  if (!HasInt8DotProducts()) GTEST_SKIP() << "this CPU has no AVX-512-VNNI";
  auto per_group = [](const float* x, int64_t cols) {
    std::vector<double> xr(static_cast<size_t>(cols));
    for (int64_t g = 0; g < cols; g += 32) {
      double amax = 0;
      for (int64_t c = g; c < g + 32; ++c) amax = std::max(amax, std::abs(double{x[c]}));
      const double scale = amax / 127;
      for (int64_t c = g; c < g + 32; ++c)
        xr[c] = scale > 0 ? std::nearbyint(x[c] / scale) * scale : 0.0;
    }
    return xr;
  };
  for (const Case& p : {Case{WeightFormat::kInt4Group, 37, 256, 0, 37, 0, 256},
                        Case{WeightFormat::kInt4Group, 40, 320, 7, 25, 96, 192},
                        Case{WeightFormat::kInt4Group, 20, 160, 0, 20, 0, 160}}) {
    CheckRoundedProducts(p, Activations::kInt8, per_group,
                         [](const Stored&, int64_t) { return false; });
  }
}

// x rounded to bf16 (8 significant bits, to nearest even), from the float's definition.
double RoundToBf16(float v) {
  if (v == 0.0f) return 0.0;
  int e = 0;
  const double m = std::frexp(static_cast<double>(v), &e);  // |m| in [0.5, 1)
  return std::ldexp(std::nearbyint(std::ldexp(m, 8)), e - 8);
}

// bf16 and fp8 products with x rounded to bf16 (WeightMatrix::x_rounding kBf16), against x rounded
// to bf16 element by element; fp8's subnormal codes, which the bf16 dot products may read as zero,
// may be dropped. Whole tensors, windows that cut fp8 blocks, vector tails.
TEST(Bf16ProductTest, EqualsTheProductWithXRoundedToBf16) {
  if (!HasBf16DotProducts()) GTEST_SKIP() << "this CPU has no AVX-512-BF16";
  auto per_element = [](const float* x, int64_t cols) {
    std::vector<double> xr(static_cast<size_t>(cols));
    for (int64_t c = 0; c < cols; ++c) xr[c] = RoundToBf16(x[c]);
    return xr;
  };
  auto fp8_subnormal = [](const Stored& s, int64_t at) {
    return !s.block_scales.empty() && (s.data[at] & 0x78) == 0;
  };
  for (const Case& p : {Case{WeightFormat::kBF16, 37, 70, 0, 37, 0, 70},
                        Case{WeightFormat::kBF16, 64, 200, 3, 50, 8, 150},
                        Case{WeightFormat::kF8Block, 300, 300, 0, 300, 0, 300},
                        Case{WeightFormat::kF8Block, 300, 384, 70, 150, 128, 256},
                        Case{WeightFormat::kF8Block, 64, 400, 0, 64, 100, 250}}) {
    CheckRoundedProducts(p, Activations::kBf16, per_element, fp8_subnormal);
  }
}

// Large activations (up to 3 * 2^20) with fp8 blocks through the bf16 products: x's 2^64 keeps them
// finite.
TEST(Bf16ProductTest, Fp8ProductsWithLargeActivationsStayRight) {
  if (!HasBf16DotProducts()) GTEST_SKIP() << "this CPU has no AVX-512-BF16";
  const Stored s = MakeStored(WeightFormat::kF8Block, 200, 256, 3);
  WeightMatrix w = Window(WeightFormat::kF8Block, s, 0, 200, 0, 256);
  w.x_rounding = Activations::kBf16;
  std::vector<float> x(256);
  for (size_t c = 0; c < x.size(); ++c)
    x[c] = 0x1p20f * static_cast<float>(c % 7 - 3.0);  // exact in bf16
  std::vector<float> y(200);
  MatMulNT(1, x.data(), 256, w, y.data(), 200);
  for (int64_t j = 0; j < 200; ++j) {
    double want = 0, mag = 0, subnormal = 0;
    for (int64_t c = 0; c < 256; ++c) {
      want += x[c] * s.dense[j * 256 + c];
      mag += std::abs(x[c] * s.dense[j * 256 + c]);
      if ((s.data[j * 256 + c] & 0x78) == 0) subnormal += std::abs(x[c] * s.dense[j * 256 + c]);
    }
    ASSERT_TRUE(std::isfinite(y[j]));
    ASSERT_NEAR(y[j], want, 1e-5 * mag + subnormal) << j;
  }
}

TEST(WeightKernelTargetTest, NamesTheDispatchedTarget) {
  const std::string t = WeightKernelTarget();
  EXPECT_FALSE(t.empty());
  EXPECT_NE(t, "?");
}

}  // namespace
}  // namespace moe::cpu
