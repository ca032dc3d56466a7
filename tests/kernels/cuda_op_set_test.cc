// The op set on a GPU (CudaOps) against the CPU's (CpuOps, the oracle): every op on the same
// random inputs placed through each, outputs poisoned with NaN first (so an unwritten element
// fails). Float32 paths within 1e-5 relative (||gpu - cpu|| / ||cpu||), products of bf16
// operands within 1e-2, exact where the arithmetic is the same (copies, gathers, routing ids,
// greedy tokens). Skipped where no GPU is visible.
#include <cmath>
#include <limits>
#include <numeric>

#include "common/presets.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/ops.h"
#include "tests/test_util.h"

namespace moe {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
using moe::testing::Random;

class CudaOpSetTest : public ::testing::Test {
 protected:
  // One array on each device.
  struct Pair {
    DeviceArray<float> cpu, gpu;
  };
  struct IntPair {
    DeviceArray<int32_t> cpu, gpu;
  };

  void SetUp() override {
    if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible: CudaOps is not run";
    auto ops = CudaOps::Create(0);
    ASSERT_TRUE(ops.ok()) << ops.status();
    gpu_ = std::move(*ops);
  }
  void TearDown() override {
    if (gpu_) {
      EXPECT_TRUE(gpu_->TakeError().ok());
    }
  }

  Pair Both(const std::vector<float>& v) {
    auto t = [&] {
      return Tensor({static_cast<int64_t>(v.size())}, FloatVector(v.begin(), v.end()));
    };
    return {cpu_.Place(t()), gpu_->Place(t())};
  }
  IntPair Both(const std::vector<int32_t>& v) { return {cpu_.Place(v), gpu_->Place(v)}; }
  Pair Poisoned(int64_t n) { return Both(std::vector<float>(static_cast<size_t>(n), kNaN)); }
  absl::StatusOr<std::pair<PlacedMatrix, PlacedMatrix>> BothMatrix(const std::vector<float>& v,
                                                                   int64_t rows, int64_t cols) {
    const WeightMatrix w = F32WeightMatrix(Tensor({rows, cols}, FloatVector(v.begin(), v.end())));
    auto c = cpu_.Place(w);
    auto g = gpu_->Place(w);
    if (!c.ok()) return c.status();
    if (!g.ok()) return g.status();
    return std::make_pair(*c, *g);
  }
  std::vector<float> Host(Ops& ops, const DeviceArray<float>& a) {
    std::vector<float> v(static_cast<size_t>(a.size()));
    ops.CopyToHost(a.data(), v.size() * sizeof(float), v.data());
    return v;
  }
  // ||gpu - cpu|| / ||cpu||, infinite where the GPU's output is not finite.
  double Error(const Pair& p) {
    const std::vector<float> want = Host(cpu_, p.cpu), got = Host(*gpu_, p.gpu);
    EXPECT_TRUE(gpu_->TakeError().ok());
    double diff = 0, norm = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      if (!std::isfinite(got[i])) return INFINITY;
      diff += (got[i] - want[i]) * static_cast<double>(got[i] - want[i]);
      norm += want[i] * static_cast<double>(want[i]);
    }
    return norm == 0 ? std::sqrt(diff) : std::sqrt(diff / norm);
  }
  // Runs `op` on both op sets.
  template <typename F>
  void OnBoth(F op) {
    op(static_cast<Ops&>(cpu_), 0);
    op(static_cast<Ops&>(*gpu_), 1);
  }
  static float* Of(const Pair& p, int side) { return side == 0 ? p.cpu.data() : p.gpu.data(); }
  static int32_t* Of(const IntPair& p, int side) { return side == 0 ? p.cpu.data() : p.gpu.data(); }

  CpuOps cpu_;
  std::unique_ptr<CudaOps> gpu_;
};

TEST_F(CudaOpSetTest, CopiesGathersAndScaledRows) {
  const int64_t n = 5, dim = 24;
  const Pair x = Both(Random(n * dim, 1));
  const IntPair index = Both(std::vector<int32_t>{3, -1, 0, 4, 1});
  const Pair scales = Both(Random(n, 2));
  Pair gathered = Poisoned(n * dim), copied = Poisoned(n * dim);
  Pair scattered = Both(std::vector<float>(n * dim, 0.0f)), added = Both(Random(n * dim, 3));
  Pair unit = Both(Random(n * dim, 4)), scaled = Both(Random(n * dim, 5));
  OnBoth([&](Ops& ops, int s) {
    ops.GatherRows(Of(x, s), Of(index, s), n, dim, Of(gathered, s));
    ops.Fill(Of(copied, s), n * dim, 0.5f);
    ops.CopyRows(Of(x, s) + 2, dim, n, dim - 4, Of(copied, s) + 1, dim);
    ops.ScatterRows(Of(x, s), Of(index, s) + 2, 3, dim, Of(scattered, s));
    ops.AddScaledRows(Of(x, s), Of(scales, s), Of(index, s) + 2, 3, dim, Of(added, s));
    ops.AddScaledRows(Of(x, s), nullptr, Of(index, s) + 2, 3, dim, Of(unit, s));
    ops.ScaleRows(Of(scaled, s), Of(scales, s), n, dim);
    ops.Scale(Of(scaled, s), -0.25f, n * dim);
  });
  EXPECT_EQ(Error(gathered), 0.0);
  EXPECT_EQ(Error(copied), 0.0);
  EXPECT_EQ(Error(scattered), 0.0);
  EXPECT_LE(Error(added), 1e-6);
  EXPECT_LE(Error(unit), 1e-6);
  EXPECT_LE(Error(scaled), 1e-6);
}

TEST_F(CudaOpSetTest, NormsActivationsAndRope) {
  const int64_t rows = 6, dim = 64, ld = 80, inter = 48, heads = 3, hd = 16;
  const Pair x = Both(Random(rows * ld, 6)), weight = Both(Random(dim, 7));
  const Pair gate_up = Both(Random(rows * 2 * inter, 8));
  const Pair cos = Both(Random(rows * hd / 2, 9)), sin = Both(Random(rows * hd / 2, 10));
  Pair normed = Poisoned(rows * ld), unit = Poisoned(rows * ld), sumsq = Poisoned(rows);
  Pair shared = Both(Random(rows * ld, 11)), silu = Poisoned(rows * inter);
  Pair gelu = Poisoned(rows * inter), biased = Both(Random(rows * ld, 12));
  Pair capped = Both(Random(rows * ld, 13, 40.0f));
  Pair inter_rope = Both(Random(rows * ld, 14)), half_rope = Both(Random(rows * ld, 14));
  OnBoth([&](Ops& ops, int s) {
    ops.RmsNorm(Of(x, s), rows, dim, ld, Of(weight, s), 1e-6f, Of(normed, s));
    ops.RmsNorm(Of(x, s), rows, dim, ld, nullptr, 1e-6f, Of(unit, s));
    ops.RowSumSquares(Of(shared, s), rows, dim, ld, Of(sumsq, s));
    ops.NormalizeRows(Of(shared, s), rows, dim, ld, Of(sumsq, s), 2.0f, 96.0f, 1e-6f,
                      Of(weight, s));
    ops.GatedActivation(Of(gate_up, s), rows, inter, Activation::kSilu, Of(silu, s));
    ops.GatedActivation(Of(gate_up, s), rows, inter, Activation::kGeluTanh, Of(gelu, s));
    ops.AddToRows(Of(biased, s), rows, dim, ld, Of(weight, s));
    ops.SoftCap(Of(capped, s), rows * ld, 30.0f);
    ops.Rope(Of(inter_rope, s) + 3, rows, heads, ld, 20, hd, Of(cos, s), Of(sin, s), true);
    ops.Rope(Of(half_rope, s) + 3, rows, heads, ld, 20, hd, Of(cos, s), Of(sin, s), false);
  });
  // The norms write dim of each row's ld floats; the rest stays poisoned on both sides.
  auto written = [&](const Pair& p) {
    const std::vector<float> want = Host(cpu_, p.cpu), got = Host(*gpu_, p.gpu);
    double diff = 0, norm = 0;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < dim; ++i) {
        const double g = got[r * ld + i], w = want[r * ld + i];
        if (!std::isfinite(g)) return static_cast<double>(INFINITY);
        diff += (g - w) * (g - w);
        norm += w * w;
      }
    }
    return std::sqrt(diff / norm);
  };
  EXPECT_LE(written(normed), 1e-5);
  EXPECT_LE(written(unit), 1e-5);
  EXPECT_LE(Error(sumsq), 1e-5);
  EXPECT_LE(Error(shared), 1e-5);
  EXPECT_LE(Error(silu), 1e-5);
  EXPECT_LE(Error(gelu), 1e-5);
  EXPECT_LE(Error(biased), 1e-6);
  EXPECT_LE(Error(capped), 1e-5);
  EXPECT_LE(Error(inter_rope), 1e-6);
  EXPECT_LE(Error(half_rope), 1e-6);
}

TEST_F(CudaOpSetTest, ProductsAndEmbedding) {
  const int64_t m = 5, n = 40, k = 64, ldx = 70;
  const Pair x = Both(Random(m * ldx, 15));
  const std::vector<float> w = Random(n * k, 16, 0.2f);
  auto placed = BothMatrix(w, n, k);
  ASSERT_TRUE(placed.ok()) << placed.status();
  const Pair wf = Both(w);
  Pair y = Poisoned(m * n), yf = Poisoned(m * n);
  const IntPair tokens = Both(std::vector<int32_t>{12, 3, 10, 49, 50});
  Pair e = Poisoned(5 * k);
  OnBoth([&](Ops& ops, int s) {
    const PlacedMatrix& pw = s == 0 ? placed->first : placed->second;
    ops.Linear(pw, Of(x, s), m, ldx, Of(y, s), n);
    ops.MatMulNT(m, n, k, Of(x, s), ldx, Of(wf, s), k, Of(yf, s), n);
    ops.Embedding(pw, 10, Of(tokens, s), 5, Of(e, s));  // vocabulary rows 10..49
  });
  EXPECT_LE(Error(y), 1e-2);   // bf16 operands on the GPU
  EXPECT_LE(Error(yf), 1e-5);  // float32 throughout
  EXPECT_LE(Error(e), 1e-2);   // the table is bf16 on the GPU
}

TEST_F(CudaOpSetTest, MlaPrefillAndDecodeAttention) {
  const int64_t heads = 4, nope = 16, rope = 8, v_dim = 16, kv_lora = 32, bs = 4, blocks = 8;
  const int64_t dim = kv_lora + rope, qk = nope + rope, kvh = nope + v_dim, ctx = 11, q_len = 3;
  const Pair cache = Both(Random(blocks * bs * dim, 17));
  const std::vector<float> w = Random(heads * kvh * kv_lora, 18, 0.2f);
  auto kv_b_proj = BothMatrix(w, heads * kvh, kv_lora);
  ASSERT_TRUE(kv_b_proj.ok()) << kv_b_proj.status();
  const Pair kv = Both(Random(ctx * heads * kvh, 19)), latent = Both(Random(ctx * dim, 20));
  const Pair q = Both(Random(q_len * heads * qk, 21));
  Pair k = Poisoned(ctx * heads * qk), v = Poisoned(ctx * heads * v_dim);
  Pair prefill = Poisoned(q_len * heads * v_dim), decode = Poisoned(2 * heads * v_dim);
  const IntPair tables = Both(std::vector<int32_t>{6, 1, -1, -1, 5, 0, 3, 2});
  const IntPair context = Both(std::vector<int32_t>{7, 13});
  OnBoth([&](Ops& ops, int s) {
    ops.SplitMlaKv(Of(kv, s), Of(latent, s), ctx, heads, nope, v_dim, kv_lora, rope, Of(k, s),
                   Of(v, s));
    ops.CausalAttention(Of(q, s), Of(k, s), Of(v, s), q_len, ctx, heads, heads, qk, v_dim,
                        ctx - q_len, 0.2f, Of(prefill, s));
    ops.MlaDecode({heads, nope, rope, v_dim, kv_lora, bs, 4, 0.2f}, Of(q, s), 2,
                  s == 0 ? kv_b_proj->first : kv_b_proj->second, Of(cache, s), Of(tables, s),
                  Of(context, s), Of(decode, s));
  });
  EXPECT_EQ(Error(k), 0.0);
  EXPECT_EQ(Error(v), 0.0);
  EXPECT_LE(Error(prefill), 1e-5);
  EXPECT_LE(Error(decode), 1e-2);  // kv_b_proj and the absorbed products in bf16 on the GPU
}

TEST_F(CudaOpSetTest, RoutingSamplingAndExperts) {
  const ModelConfig config = *PresetConfig("tiny-dsv3");
  const int64_t n = 6, experts = config.n_routed_experts, top_k = config.num_experts_per_tok;
  const Pair logits = Both(Random(n * experts, 22)), bias = Both(Random(experts, 23, 0.1f));
  IntPair ids = Both(std::vector<int32_t>(n * top_k, -7));
  Pair weights = Poisoned(n * top_k);
  std::vector<int32_t> tokens[2];
  std::vector<SampleRequest> greedy(n);
  const Pair vocab_logits = Both(Random(n * 100, 24));
  Pair sum = Poisoned(4 * 3);
  OnBoth([&](Ops& ops, int s) {
    ops.RouteTokens(config, Of(logits, s), Of(bias, s), n, Of(ids, s), Of(weights, s));
    tokens[s].resize(n);
    ops.Sample(Of(vocab_logits, s), n, 100, greedy, tokens[s].data());
    ops.ForEachExpert(5, {true, false, true, true, false}, Of(sum, s), 4, 3,
                      [&](int64_t e, float* acc) { ops.Fill(acc + e * 2, 1, float(e)); });
  });
  std::vector<int32_t> cpu_ids(ids.cpu.data(), ids.cpu.data() + ids.cpu.size());
  std::vector<int32_t> gpu_ids(cpu_ids.size());
  gpu_->CopyToHost(ids.gpu.data(), gpu_ids.size() * sizeof(int32_t), gpu_ids.data());
  EXPECT_EQ(gpu_ids, cpu_ids);
  EXPECT_LE(Error(weights), 1e-6);
  EXPECT_EQ(tokens[1], tokens[0]);
  EXPECT_EQ(Error(sum), 0.0);
  // Tokens per expert over two calls, choices of other ranks (-1) not counted.
  const IntPair choices = Both(std::vector<int32_t>{2, 0, -1, 2, 5, 2, 0});
  std::vector<int64_t> counts[2];
  OnBoth([&](Ops& ops, int s) {
    DeviceArray<int64_t> c = ops.AllocateCounts(6);
    ops.CountChoices(Of(choices, s), 7, c.data());
    ops.CountChoices(Of(choices, s), 3, c.data());
    counts[s].resize(6);
    ops.CopyToHost(c.data(), 6 * sizeof(int64_t), counts[s].data());
  });
  EXPECT_EQ(counts[0], (std::vector<int64_t>{3, 0, 4, 0, 0, 1}));
  EXPECT_EQ(counts[1], counts[0]);
}

// The routed experts, grouped on the GPU, as the CPU runs each expert's rows on their own.
TEST_F(CudaOpSetTest, RoutedExpertsMatch) {
  const int64_t experts = 4, hidden = 32, inter = 24, rows = 7, k = 2;
  std::vector<std::pair<PlacedMatrix, PlacedMatrix>> placed;
  for (int64_t e = 0; e < experts; ++e) {
    for (auto shape :
         {std::pair{inter, hidden}, std::pair{inter, hidden}, std::pair{hidden, inter}}) {
      auto m = BothMatrix(Random(shape.first * shape.second, 30 + placed.size(), 0.2f), shape.first,
                          shape.second);
      ASSERT_TRUE(m.ok()) << m.status();
      placed.push_back(*m);
    }
  }
  std::vector<Ops::Expert> cpu_experts, gpu_experts;
  for (int64_t e = 0; e < experts; ++e) {
    cpu_experts.push_back(
        {&placed[3 * e].first, &placed[3 * e + 1].first, &placed[3 * e + 2].first});
    gpu_experts.push_back(
        {&placed[3 * e].second, &placed[3 * e + 1].second, &placed[3 * e + 2].second});
  }
  auto cpu_set = cpu_.PlaceExperts(cpu_experts);
  auto gpu_set = gpu_->PlaceExperts(gpu_experts);
  ASSERT_TRUE(cpu_set.ok() && gpu_set.ok()) << gpu_set.status();
  const Pair x = Both(Random(rows * hidden, 40));
  // Expert 3 unused; expert 0 chosen by most rows; -1: an expert of another rank (row 5 has
  // one choice here, as a row the dispatcher brings may).
  const IntPair local = Both(std::vector<int32_t>{0, 1, 0, -1, 1, 0, 0, 2, 2, 1, -1, 1, 1, 0});
  const Pair weight = Both(Random(rows * k, 41));
  Pair y = Poisoned(rows * hidden);
  cpu_.RoutedExperts(**cpu_set, x.cpu.data(), rows, local.cpu.data(), weight.cpu.data(), k,
                     Activation::kSilu, false, y.cpu.data());
  gpu_->RoutedExperts(**gpu_set, x.gpu.data(), rows, local.gpu.data(), weight.gpu.data(), k,
                      Activation::kSilu, false, y.gpu.data());
  EXPECT_LE(Error(y), 1e-2);  // bf16 operands on the GPU
}

TEST_F(CudaOpSetTest, OpsTheDeviceLacksAreErrors) {
  const Pair q = Both(Random(16, 25));
  Pair out = Poisoned(16);
  Ops& gpu = *gpu_;
  gpu.CausalAttention(q.gpu.data(), q.gpu.data(), q.gpu.data(), 1, 1, 2, 1, 8, 8, 0, 1.0f,
                      out.gpu.data());  // two heads over one K/V head
  EXPECT_EQ(gpu_->TakeError().code(), absl::StatusCode::kUnimplemented);
  EXPECT_TRUE(gpu_->TakeError().ok());  // taken
}

}  // namespace
}  // namespace moe
