// The CPU op set (kernels/cpu/cpu_ops.h) — the oracle of every device's ops — against direct
// double-precision computations, for the ops that are more than a call of one CPU kernel.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/ops.h"
#include "tests/kernels/stored_weight.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using moe::testing::Random;

constexpr float kNaNForTest = std::numeric_limits<float>::quiet_NaN();

// A float32 WeightMatrix holding a copy of `data` [rows, cols].
WeightMatrix F32Matrix(const std::vector<float>& data, int64_t rows, int64_t cols) {
  return F32WeightMatrix(Tensor({rows, cols}, FloatVector(data.begin(), data.end())));
}

Tensor AsTensor(const std::vector<float>& v, std::vector<int64_t> shape) {
  return Tensor(std::move(shape), FloatVector(v.begin(), v.end()));
}

// Absorbed MLA decode equals attention over the expanded keys and values: per head,
// k_t = [W_UK_h c_kv_t | k_pe_t], v_t = W_UV_h c_kv_t, softmax(scale q·k_t) weighting v_t. With
// kv_b_proj in each stored format, as a rank's window of heads (heads 1..3 of 4), the expected
// values from the format's definition.
class MlaDecodeTest : public ::testing::TestWithParam<WeightFormat> {};

TEST_P(MlaDecodeTest, EqualsAttentionOverExpandedKeys) {
  CpuOps ops;
  const int64_t heads = 3, nope = 8, rope = 4, v_dim = 6, kv_lora = 64, bs = 4, blocks = 6;
  const int64_t dim = kv_lora + rope, qk = nope + rope, kvh = nope + v_dim;
  const std::vector<float> cache = Random(blocks * bs * dim, 1);
  const Stored stored = MakeStored(GetParam(), (heads + 1) * kvh, kv_lora, 2);
  // Two queries over scattered blocks: 7 positions (blocks 4, 1) and 13 (blocks 5, 0, 3, 2).
  const int64_t width = 4, b = 2;
  const std::vector<int32_t> tables = {4, 1, -1, -1, 5, 0, 3, 2};
  const std::vector<int32_t> context = {7, 13};
  std::vector<float> q = Random(b * heads * qk, 3);
  if (GetParam() != WeightFormat::kF32) {  // scores of the size the format's weights give
    for (float& x : q) x *= 0.1f;
  }
  auto kv_b_proj = ops.Place(Window(GetParam(), stored, kvh, heads * kvh, 0, kv_lora));
  ASSERT_TRUE(kv_b_proj.ok());
  const float scale = 0.37f;
  std::vector<float> out(b * heads * v_dim, -1.0f);
  ops.MlaDecode({heads, nope, rope, v_dim, kv_lora, bs, width, scale}, q.data(), b, *kv_b_proj,
                cache.data(), tables.data(), context.data(), out.data());
  double worst = 0, largest = 0;
  for (int64_t i = 0; i < b; ++i) {
    for (int64_t h = 0; h < heads; ++h) {
      const float* qi = q.data() + (i * heads + h) * qk;
      const double* w_uk = stored.dense.data() + (h + 1) * kvh * kv_lora;
      const double* w_uv = w_uk + nope * kv_lora;
      std::vector<double> score(context[i]);
      double top = -1e300;
      for (int64_t t = 0; t < context[i]; ++t) {
        const float* row = cache.data() + (tables[i * width + t / bs] * bs + t % bs) * dim;
        double s = 0;
        for (int64_t d = 0; d < nope; ++d) {
          double k = 0;
          for (int64_t c = 0; c < kv_lora; ++c) k += w_uk[d * kv_lora + c] * row[c];
          s += qi[d] * k;
        }
        for (int64_t d = 0; d < rope; ++d) s += double(qi[nope + d]) * row[kv_lora + d];
        score[t] = scale * s;
        top = std::max(top, score[t]);
      }
      double sum = 0;
      for (double& s : score) sum += (s = std::exp(s - top));
      for (int64_t d = 0; d < v_dim; ++d) {
        double o = 0;
        for (int64_t t = 0; t < context[i]; ++t) {
          const float* row = cache.data() + (tables[i * width + t / bs] * bs + t % bs) * dim;
          double v = 0;
          for (int64_t c = 0; c < kv_lora; ++c) v += w_uv[d * kv_lora + c] * row[c];
          o += score[t] / sum * v;
        }
        worst = std::max(worst, std::abs(out[(i * heads + h) * v_dim + d] - o));
        largest = std::max(largest, std::abs(o));
      }
    }
  }
  EXPECT_GT(largest, 0.1);
  EXPECT_LE(worst, 1e-5 * largest) << "largest |out| " << largest;
}

INSTANTIATE_TEST_SUITE_P(Formats, MlaDecodeTest,
                         ::testing::Values(WeightFormat::kF32, WeightFormat::kBF16,
                                           WeightFormat::kF16, WeightFormat::kF8Block,
                                           WeightFormat::kInt4Group),
                         [](const ::testing::TestParamInfo<WeightFormat>& info) {
                           return std::string(WeightFormatName(info.param));
                         });

TEST(CpuOpSetTest, GatherScatterAndScaledRows) {
  CpuOps ops;
  const int64_t dim = 3;
  const std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  const std::vector<int32_t> index = {2, -1, 0};
  std::vector<float> out(9, -1.0f);
  ops.GatherRows(x.data(), index.data(), 3, dim, out.data());
  EXPECT_EQ(out, (std::vector<float>{7, 8, 9, 0, 0, 0, 1, 2, 3}));  // a negative index: zeros
  std::vector<float> y(9, 0.0f);
  const std::vector<int32_t> to = {1, 2};
  ops.ScatterRows(x.data(), to.data(), 2, dim, y.data());
  EXPECT_EQ(y, (std::vector<float>{0, 0, 0, 1, 2, 3, 4, 5, 6}));
  const std::vector<float> scales = {2.0f, -1.0f};
  ops.AddScaledRows(x.data(), scales.data(), to.data(), 2, dim, y.data());
  EXPECT_EQ(y, (std::vector<float>{0, 0, 0, 3, 6, 9, 0, 0, 0}));
  ops.AddScaledRows(x.data(), nullptr, to.data(), 2, dim, y.data());  // null scales: 1
  EXPECT_EQ(y, (std::vector<float>{0, 0, 0, 4, 8, 12, 4, 5, 6}));
  std::vector<float> z = x;
  ops.ScaleRows(z.data(), scales.data(), 2, dim);
  EXPECT_EQ(z, (std::vector<float>{2, 4, 6, -4, -5, -6, 7, 8, 9}));
  std::vector<float> wide(2 * 5, 0.0f);
  ops.CopyRows(x.data() + 1, dim, 2, 2, wide.data() + 3, 5);  // 2 x 2 from stride 3 to stride 5
  EXPECT_EQ(wide, (std::vector<float>{0, 0, 0, 2, 3, 0, 0, 0, 5, 6}));
}

// The norm whose sums of squares were taken elsewhere: with the row's own sum it is RMSNorm; a
// sum over `replication` copies of the row gives the same.
TEST(CpuOpSetTest, NormalizeRowsIsRmsNormOverTheSharedSum) {
  CpuOps ops;
  const int64_t rows = 3, dim = 10, ld = 12;
  const std::vector<float> x = Random(rows * ld, 4), weight = Random(dim, 5);
  std::vector<float> sumsq(rows), a = x, b = x;
  ops.RowSumSquares(x.data(), rows, dim, ld, sumsq.data());
  for (float& s : sumsq) s *= 2.0f;  // the sum over two ranks that each hold the whole row
  ops.NormalizeRows(a.data(), rows, dim, ld, sumsq.data(), 2.0f, dim, 1e-5f, weight.data());
  ops.RmsNorm(b.data(), rows, dim, ld, weight.data(), 1e-5f, b.data());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += double(x[r * ld + i]) * x[r * ld + i];
    const double inv = 1.0 / std::sqrt(ss / dim + 1e-5);
    for (int64_t i = 0; i < dim; ++i) {
      EXPECT_NEAR(a[r * ld + i], x[r * ld + i] * inv * weight[i], 1e-5);
      EXPECT_NEAR(b[r * ld + i], x[r * ld + i] * inv * weight[i], 1e-5);
    }
  }
}

// RoPE over strided heads rotates each head's vector by its row's angles, and nothing else.
TEST(CpuOpSetTest, RopeOnStridedHeads) {
  CpuOps ops;
  const int64_t rows = 2, heads = 3, dim = 4, head_stride = 6, row_stride = 20;
  const std::vector<float> x = Random(rows * row_stride, 6);
  const std::vector<float> cos = {0.6f, 1.0f, 0.0f, -1.0f}, sin = {0.8f, 0.0f, 1.0f, 0.0f};
  for (bool interleaved : {true, false}) {
    std::vector<float> y = x;
    ops.Rope(y.data(), rows, heads, row_stride, head_stride, dim, cos.data(), sin.data(),
             interleaved);
    std::vector<bool> touched(y.size(), false);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = r * row_stride + h * head_stride;
        for (int64_t i = 0; i < dim / 2; ++i) {
          const int64_t a = base + (interleaved ? 2 * i : i);
          const int64_t b = base + (interleaved ? 2 * i + 1 : i + dim / 2);
          const float c = cos[r * 2 + i], s = sin[r * 2 + i];
          EXPECT_FLOAT_EQ(y[a], x[a] * c - x[b] * s);
          EXPECT_FLOAT_EQ(y[b], x[b] * c + x[a] * s);
          touched[a] = touched[b] = true;
        }
      }
    }
    for (size_t i = 0; i < y.size(); ++i) {
      if (!touched[i]) {
        EXPECT_EQ(y[i], x[i]) << i;
      }
    }
  }
}

// Experts run one after another or in parallel on private accumulators (many active ones): the
// sum is the same either way, inactive experts never run.
TEST(CpuOpSetTest, ForEachExpertSumsEveryActiveExpertOnce) {
  CpuOps ops;
  const int saved = cpu::NumThreads();
  const int64_t rows = 4, dim = 5;
  for (int threads : {1, 2}) {
    cpu::SetNumThreads(threads);
    for (int64_t count : {3, 40}) {
      std::vector<bool> active(static_cast<size_t>(count));
      std::vector<float> expected(rows * dim, 0.0f);
      for (int64_t e = 0; e < count; ++e) {
        active[e] = e % 3 != 1;
        if (active[e]) expected[(e % rows) * dim + e % dim] += static_cast<float>(e + 1);
      }
      std::vector<float> y(rows * dim, 7.0f);  // zeroed first
      ops.ForEachExpert(count, active, y.data(), rows, dim, [&](int64_t e, float* acc) {
        ASSERT_TRUE(active[e]);
        acc[(e % rows) * dim + e % dim] += static_cast<float>(e + 1);
      });
      EXPECT_EQ(y, expected) << count << " experts, " << threads << " threads";
    }
  }
  cpu::SetNumThreads(saved);
}

// The routed experts: each row's choices on this rank (-1: another rank's expert), weighted at
// the output, or (Llama 4) at the input, against a direct computation from the weights' stored
// values; with few rows per expert (the products split over the threads, decode) and many (each
// expert's rows on their own), on one thread and two, in each weight format.
class RoutedExpertsTest : public ::testing::TestWithParam<WeightFormat> {};

TEST_P(RoutedExpertsTest, SumEachRowsWeightedChoices) {
  CpuOps ops;
  const int saved = cpu::NumThreads();
  const int64_t experts = 3, hidden = 64, inter = 96, k = 2;
  std::vector<Stored> w;  // gate, up, down of each expert
  std::vector<PlacedMatrix> placed;
  for (int64_t e = 0; e < experts; ++e) {
    for (auto [r, c] :
         {std::pair{inter, hidden}, std::pair{inter, hidden}, std::pair{hidden, inter}}) {
      w.push_back(MakeStored(GetParam(), r, c, static_cast<uint32_t>(50 + w.size())));
      auto m = ops.Place(Window(GetParam(), w.back(), 0, r, 0, c));
      ASSERT_TRUE(m.ok());
      placed.push_back(*m);
    }
  }
  std::vector<Ops::Expert> list;
  for (int64_t e = 0; e < experts; ++e) {
    list.push_back({&placed[3 * e], &placed[3 * e + 1], &placed[3 * e + 2]});
  }
  auto set = ops.PlaceExperts(list);
  ASSERT_TRUE(set.ok());
  // x of a size that gives activations of order 0.1-1 with each format's random weights.
  const float x_scale = GetParam() == WeightFormat::kF8Block     ? 0.002f
                        : GetParam() == WeightFormat::kInt4Group ? 0.5f
                                                                 : 0.05f;
  for (int64_t rows : {5, 40}) {
    const std::vector<float> x = Random(rows * hidden, 60, x_scale);
    const std::vector<float> weight = Random(rows * k, 61);
    std::vector<int32_t> local(static_cast<size_t>(rows * k));
    for (int64_t i = 0; i < rows * k; ++i) local[i] = static_cast<int32_t>((i * 7 + i / 3) % 4) - 1;
    for (int threads : {1, 2}) {
      cpu::SetNumThreads(threads);
      for (bool on_input : {false, true}) {
        std::vector<float> y(rows * hidden, kNaNForTest);
        ops.RoutedExperts(**set, x.data(), rows, local.data(), weight.data(), k, Activation::kSilu,
                          on_input, y.data());
        double worst = 0, largest = 0;
        for (int64_t r = 0; r < rows; ++r) {
          std::vector<double> want(hidden, 0.0);
          for (int64_t j = 0; j < k; ++j) {
            const int32_t e = local[r * k + j];
            if (e < 0) continue;
            const double s = weight[r * k + j];
            const std::vector<double>&g = w[3 * e].dense, &u = w[3 * e + 1].dense,
                  &d = w[3 * e + 2].dense;
            std::vector<double> a(inter);
            for (int64_t i = 0; i < inter; ++i) {
              double gi = 0, ui = 0;
              for (int64_t c = 0; c < hidden; ++c) {
                const double xc = (on_input ? s : 1.0) * x[r * hidden + c];
                gi += g[i * hidden + c] * xc;
                ui += u[i * hidden + c] * xc;
              }
              a[i] = gi / (1.0 + std::exp(-gi)) * ui;
            }
            for (int64_t c = 0; c < hidden; ++c) {
              double o = 0;
              for (int64_t i = 0; i < inter; ++i) o += d[c * inter + i] * a[i];
              want[c] += (on_input ? 1.0 : s) * o;
            }
          }
          for (int64_t c = 0; c < hidden; ++c) {
            worst = std::max(worst, std::abs(y[r * hidden + c] - want[c]));
            largest = std::max(largest, std::abs(want[c]));
          }
        }
        EXPECT_GT(largest, 1e-3) << rows << " rows";
        EXPECT_LE(worst, 1e-5 * largest)
            << rows << " rows, " << threads << " threads, on_input " << on_input;
      }
    }
  }
  cpu::SetNumThreads(saved);
}

INSTANTIATE_TEST_SUITE_P(Formats, RoutedExpertsTest,
                         ::testing::Values(WeightFormat::kF32, WeightFormat::kBF16,
                                           WeightFormat::kF8Block, WeightFormat::kInt4Group),
                         [](const ::testing::TestParamInfo<WeightFormat>& info) {
                           return std::string(WeightFormatName(info.param));
                         });

TEST(CpuOpSetTest, CountChoicesAddsTokensPerExpertSkippingOtherRanks) {
  CpuOps ops;
  DeviceArray<int64_t> counts = ops.AllocateCounts(4);
  const std::vector<int32_t> ids = {1, 3, -1, 1};
  ops.CountChoices(ids.data(), 4, counts.data());
  ops.CountChoices(ids.data(), 2, counts.data());
  EXPECT_EQ(std::vector<int64_t>(counts.data(), counts.data() + 4),
            (std::vector<int64_t>{0, 3, 0, 2}));
}

TEST(CpuOpSetTest, EmbeddingRowsOutsideTheShardAreZero) {
  CpuOps ops;
  const std::vector<float> table = {1, 2, 3, 4, 5, 6};  // rows 10, 11, 12 of the vocabulary
  auto placed = ops.Place(F32Matrix(table, 3, 2));
  ASSERT_TRUE(placed.ok());
  std::vector<float> out(8, -1.0f);
  const std::vector<int32_t> tokens = {12, 3, 10, 13};
  ops.Embedding(*placed, 10, tokens.data(), 4, out.data());
  EXPECT_EQ(out, (std::vector<float>{5, 6, 0, 0, 1, 2, 0, 0}));
  const DeviceArray<float> t = ops.Place(AsTensor({1, 2}, {2}));
  EXPECT_EQ(t.device(), Device::kCpu);
  EXPECT_EQ(t.size(), 2);
}

}  // namespace
}  // namespace moe
