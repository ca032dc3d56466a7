// Every CUDA kernel against its CPU twin on fresh random inputs, outputs poisoned with NaN first
// (so an unwritten element fails). Float32 paths: ||gpu - cpu|| / ||cpu|| <= 1e-4 (1e-5 for
// short sums); products of bf16 operands are compared with a CPU product of the same rounded
// operands; exact where the arithmetic is the same (conversions, copies, routing ids, counts,
// sampled tokens).
// Skipped where no GPU is visible.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>

#include "common/dtype.h"
#include "common/presets.h"
#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/router.h"
#include "kernels/cpu/sampler.h"
#include "kernels/cpu/weight_matmul.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/device_weight.h"
#include "kernels/cuda/ops.h"
#include "tests/kernels/stored_weight.h"

namespace moe::cuda {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible: the CUDA kernels are not run";
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
    ASSERT_EQ(cublasCreate(&blas_), CUBLAS_STATUS_SUCCESS);
  }
  void TearDown() override {
    if (blas_ != nullptr) cublasDestroy(blas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  std::vector<float> Random(size_t n, float scale = 1.0f) {
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (float& x : v) x = d(rng_);
    return v;
  }
  template <typename T>
  DeviceBuffer<T> Up(const std::vector<T>& v) {
    DeviceBuffer<T> b;
    EXPECT_TRUE(b.Upload(v, stream_).ok());
    return b;
  }
  DeviceBuffer<float> Poisoned(size_t n) { return Up(std::vector<float>(n, kNaN)); }
  template <typename T>
  std::vector<T> Down(const DeviceBuffer<T>& b, size_t n) {
    std::vector<T> v(n);
    EXPECT_TRUE(b.Download(v.data(), n, stream_).ok());
    EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    return v;
  }
  static double RelativeError(const std::vector<float>& got, const std::vector<float>& want) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      if (!std::isfinite(got[i])) return INFINITY;
      diff += (got[i] - want[i]) * static_cast<double>(got[i] - want[i]);
      norm += want[i] * static_cast<double>(want[i]);
    }
    return std::sqrt(diff / norm);
  }

  std::mt19937 rng_{12345};
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
};

std::vector<bf16> ToBf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    __nv_bfloat16_raw raw;
    raw.x = F32ToBF16(v[i]);
    out[i] = bf16(raw);
  }
  return out;
}
std::vector<float> RoundBf16(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = BF16ToF32(F32ToBF16(v[i]));
  return out;
}

// The whole of a stored tensor as a WeightMatrix.
WeightMatrix All(WeightFormat f, const Stored& s) { return Window(f, s, 0, s.rows, 0, s.cols); }

TEST_F(CudaOpsTest, ConversionsAreExact) {
  const auto x = Random(1000, 3.0f);
  auto dx = Up(x);
  DeviceBuffer<bf16> b;
  ASSERT_TRUE(b.Allocate(x.size()).ok());
  auto back = Poisoned(x.size());
  F32ToBf16(dx.data(), b.data(), 1000, stream_);
  Bf16ToF32(b.data(), back.data(), 1000, stream_);
  EXPECT_EQ(Down(back, 1000), RoundBf16(x));
}

TEST_F(CudaOpsTest, StridedConversionGatherAndScatter) {
  const int64_t rows = 13, cols = 40, ld = 56;
  const auto x = Random(rows * ld);
  auto dx = Up(x);
  DeviceBuffer<bf16> b;
  ASSERT_TRUE(b.Allocate(rows * cols).ok());
  F32ToBf16Rows(dx.data(), rows, cols, ld, b.data(), stream_);
  auto back = Poisoned(rows * cols);
  Bf16ToF32(b.data(), back.data(), rows * cols, stream_);
  const auto got = Down(back, rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      ASSERT_EQ(got[r * cols + c], BF16ToF32(F32ToBF16(x[r * ld + c]))) << r << "," << c;
    }
  }
  // Gather rows in a shuffled order (one twice), then scatter them into a poisoned pool.
  std::vector<int32_t> order = {7, 0, 12, 3, 3, 9};
  auto dorder = Up(order);
  auto gathered = Poisoned(order.size() * ld);
  GatherRows(dx.data(), dorder.data(), static_cast<int64_t>(order.size()), ld, gathered.data(),
             stream_);
  const auto g = Down(gathered, order.size() * ld);
  for (size_t i = 0; i < order.size(); ++i) {
    for (int64_t c = 0; c < ld; ++c) ASSERT_EQ(g[i * ld + c], x[order[i] * ld + c]);
  }
  const std::vector<int32_t> slots = {4, 1, 6};
  auto dslots = Up(slots);
  auto pool = Poisoned(8 * ld);
  ScatterRows(gathered.data(), dslots.data(), 3, ld, pool.data(), stream_);
  const auto p = Down(pool, 8 * ld);
  for (size_t i = 0; i < slots.size(); ++i) {
    for (int64_t c = 0; c < ld; ++c) ASSERT_EQ(p[slots[i] * ld + c], g[i * ld + c]);
  }
  EXPECT_TRUE(std::isnan(p[0])) << "a slot nobody wrote was written";
}

TEST_F(CudaOpsTest, RmsNormSiluAndAdd) {
  const int64_t rows = 7, dim = 96, ld = 100;
  const auto x = Random(rows * ld), w = Random(dim);
  auto dx = Up(x), dw = Up(w);
  auto dy = Up(std::vector<float>(rows * ld, kNaN));
  RmsNorm(dx.data(), rows, dim, ld, dw.data(), 1e-6f, dy.data(), stream_);
  std::vector<float> want(rows * ld, kNaN);
  cpu::RmsNorm(x.data(), rows, dim, ld, w.data(), 1e-6f, want.data());
  auto got = Down(dy, rows * ld);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> g(got.begin() + r * ld, got.begin() + r * ld + dim);
    std::vector<float> e(want.begin() + r * ld, want.begin() + r * ld + dim);
    EXPECT_LE(RelativeError(g, e), 1e-5);
  }
  const auto gu = Random(rows * 2 * 48);
  auto dgu = Up(gu);
  auto dact = Poisoned(rows * 48);
  SiluAndMul(dgu.data(), rows, 48, dact.data(), stream_);
  std::vector<float> act(rows * 48);
  cpu::SiluAndMul(gu.data(), rows, 48, act.data());
  EXPECT_LE(RelativeError(Down(dact, rows * 48), act), 1e-5);
  Add(dact.data(), dgu.data(), rows * 48, stream_);
  cpu::Add(act.data(), gu.data(), rows * 48);
  EXPECT_LE(RelativeError(Down(dact, rows * 48), act), 1e-5);
}

TEST_F(CudaOpsTest, RopeOnStridedHeads) {
  const int64_t rows = 5, heads = 3, head_stride = 40, row_stride = 130, dim = 16, offset = 24;
  auto x = Random(rows * row_stride);
  const auto cos = Random(rows * dim / 2), sin = Random(rows * dim / 2);
  auto dx = Up(x);
  auto dc = Up(cos), dsn = Up(sin);
  RopeInterleaved(dx.data() + offset, rows, heads, row_stride, head_stride, dim, dc.data(),
                  dsn.data(), stream_);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      cpu::RopeInterleaved(x.data() + r * row_stride + h * head_stride + offset, dim,
                           cos.data() + r * dim / 2, sin.data() + r * dim / 2);
    }
  }
  EXPECT_LE(RelativeError(Down(dx, x.size()), x), 1e-6);
}

// The table holds vocabulary rows 10..59 (a TP shard): other tokens look up zeros.
TEST_F(CudaOpsTest, EmbeddingLookup) {
  const auto table = Random(50 * 24);
  const std::vector<int32_t> tokens = {13, 59, 10, 13, 60, 3};
  auto dt = Up(ToBf16(table));
  auto dtok = Up(tokens);
  auto out = Poisoned(6 * 24);
  EmbeddingLookup(dt.data(), 10, 50, dtok.data(), 6, 24, out.data(), stream_);
  const auto got = Down(out, 6 * 24);
  const auto rounded = RoundBf16(table);
  for (int i = 0; i < 6; ++i) {
    const int r = tokens[i] - 10;
    for (int c = 0; c < 24; ++c) {
      ASSERT_EQ(got[i * 24 + c], r >= 0 && r < 50 ? rounded[r * 24 + c] : 0.0f) << i;
    }
  }
}

TEST_F(CudaOpsTest, LinearMatchesCpuOnBf16Operands) {
  for (auto [m, n, k] :
       std::vector<std::tuple<int, int, int>>{{1, 64, 48}, {9, 130, 70}, {64, 256, 512}}) {
    const auto x = Random(m * k), w = Random(n * k, 0.1f);
    auto dx = Up(x);
    auto dw = Up(ToBf16(w));
    DeviceBuffer<bf16> scratch;
    ASSERT_TRUE(scratch.Allocate(m * k).ok());
    auto dy = Poisoned(m * n);
    ASSERT_TRUE(
        Linear(blas_, dx.data(), m, k, dw.data(), n, dy.data(), scratch.data(), stream_).ok());
    const auto xr = RoundBf16(x), wr = RoundBf16(w);
    std::vector<float> want(m * n);
    cpu::MatMulNT(m, n, k, xr.data(), k, wr.data(), k, want.data(), n);
    EXPECT_LE(RelativeError(Down(dy, m * n), want), 1e-4) << m << "x" << n << "x" << k;
  }
}

TEST_F(CudaOpsTest, LinearReadsStridedRowsAndLinearF32IsFloat32) {
  const int64_t m = 11, n = 37, k = 64, ld = 80;
  const auto x = Random(m * ld), w = Random(n * k, 0.1f);
  auto dx = Up(x), dwf = Up(w);
  auto dw = Up(ToBf16(w));
  DeviceBuffer<bf16> scratch;
  ASSERT_TRUE(scratch.Allocate(m * k).ok());
  auto dy = Poisoned(m * n);
  ASSERT_TRUE(
      Linear(blas_, dx.data(), m, k, dw.data(), n, dy.data(), scratch.data(), stream_, ld).ok());
  const auto xr = RoundBf16(x), wr = RoundBf16(w);
  std::vector<float> want(m * n);
  cpu::MatMulNT(m, n, k, xr.data(), ld, wr.data(), k, want.data(), n);
  EXPECT_LE(RelativeError(Down(dy, m * n), want), 1e-4);
  // Float32 operands: compared with the unrounded product, at float32 accuracy.
  std::vector<float> x_dense(m * k);
  for (int64_t r = 0; r < m; ++r) std::copy_n(x.begin() + r * ld, k, x_dense.begin() + r * k);
  auto dxd = Up(x_dense);
  auto dy32 = Poisoned(m * n);
  ASSERT_TRUE(LinearF32(blas_, dxd.data(), m, k, dwf.data(), n, dy32.data(), stream_).ok());
  cpu::MatMulNT(m, n, k, x_dense.data(), k, w.data(), k, want.data(), n);
  EXPECT_LE(RelativeError(Down(dy32, m * n), want), 1e-5);
}

// The two products of absorbed MLA decode: per head, q_nope · W_UK (b not transposed) and
// o_lat · W_UV^T (transposed), on operands interleaved by head.
TEST_F(CudaOpsTest, BatchedMatMulOnHeadInterleavedOperands) {
  const int64_t heads = 5, b = 7, nope = 24, lora = 40, v = 16, kvh = nope + v;
  const auto q = RoundBf16(Random(b * heads * nope));          // [b, heads, nope]
  const auto w = RoundBf16(Random(heads * kvh * lora, 0.2f));  // [heads, nope + v, lora]
  auto dq = Up(ToBf16(q)), dw = Up(ToBf16(w));
  auto absorbed = Poisoned(b * heads * lora);
  ASSERT_TRUE(BatchedMatMul(blas_, heads, b, lora, nope, {dq.data(), heads * nope, nope},
                            {dw.data(), lora, kvh * lora}, false, absorbed.data(), heads * lora,
                            lora, stream_)
                  .ok());
  std::vector<float> want(b * heads * lora, 0.0f);
  for (int64_t h = 0; h < heads; ++h) {
    cpu::MatMulNN(b, lora, nope, q.data() + h * nope, heads * nope, w.data() + h * kvh * lora, lora,
                  want.data() + h * lora, heads * lora);
  }
  EXPECT_LE(RelativeError(Down(absorbed, want.size()), want), 1e-4);

  const auto o = RoundBf16(Random(b * heads * lora));  // [b, heads, lora]
  auto dout = Up(ToBf16(o));
  auto out = Poisoned(b * heads * v);
  ASSERT_TRUE(BatchedMatMul(blas_, heads, b, v, lora, {dout.data(), heads * lora, lora},
                            {dw.data() + nope * lora, lora, kvh * lora}, true, out.data(),
                            heads * v, v, stream_)
                  .ok());
  std::vector<float> want_out(b * heads * v);
  for (int64_t h = 0; h < heads; ++h) {
    cpu::MatMulNT(b, v, lora, o.data() + h * lora, heads * lora, w.data() + (h * kvh + nope) * lora,
                  lora, want_out.data() + h * v, heads * v);
  }
  EXPECT_LE(RelativeError(Down(out, want_out.size()), want_out), 1e-4);
}

TEST_F(CudaOpsTest, MlaDecodeAttentionOverScatteredBlocks) {
  const int64_t heads = 4, lora = 64, rope = 16, row = lora + rope, bs = 16, max_blocks = 4;
  const std::vector<int32_t> ctx = {1, 37, 64};
  const std::vector<int32_t> tables = {5, 0, 0, 0, /**/ 2, 7, 1, 0, /**/ 3, 6, 4, 9};
  const auto cache = Random(10 * bs * row);
  const auto q = Random(3 * heads * row);
  auto dq = Up(q), dcache = Up(cache);
  auto dt = Up(tables), dctx = Up(ctx);
  auto out = Poisoned(3 * heads * lora);
  MlaDecodeAttention(dq.data(), 3, heads, lora, rope, dcache.data(), dt.data(), max_blocks,
                     dctx.data(), bs, 0.125f, out.data(), stream_);
  std::vector<float> want(3 * heads * lora);
  for (int b = 0; b < 3; ++b) {
    cpu::MlaDecodeAttention(q.data() + b * heads * row, heads, lora, rope, cache.data(),
                            tables.data() + b * max_blocks, bs, ctx[b], 0.125f,
                            want.data() + b * heads * lora);
  }
  EXPECT_LE(RelativeError(Down(out, want.size()), want), 1e-4);
}

TEST_F(CudaOpsTest, CausalAttentionAfterACachedPrefix) {
  const int64_t q_len = 9, start = 23, ctx = start + q_len, heads = 3, dqk = 48, dv = 32;
  const auto q = Random(q_len * heads * dqk), k = Random(ctx * heads * dqk),
             v = Random(ctx * heads * dv);
  auto dq = Up(q), dk = Up(k), dv_ = Up(v);
  auto out = Poisoned(q_len * heads * dv);
  CausalAttention(dq.data(), dk.data(), dv_.data(), q_len, ctx, heads, dqk, dv, start, 0.2f,
                  out.data(), stream_);
  std::vector<float> want(q_len * heads * dv);
  cpu::CausalAttention(q.data(), k.data(), v.data(), q_len, ctx, heads, dqk, dv, start, 0.2f,
                       want.data());
  EXPECT_LE(RelativeError(Down(out, want.size()), want), 1e-4);
}

TEST_F(CudaOpsTest, SplitMlaKvSharesTheRopeKeyAcrossHeads) {
  const int64_t ctx = 6, heads = 3, nope = 8, v = 5, lora = 12, rope = 4;
  const auto kv = Random(ctx * heads * (nope + v)), latent = Random(ctx * (lora + rope));
  auto dkv = Up(kv), dlat = Up(latent);
  auto k = Poisoned(ctx * heads * (nope + rope)), vv = Poisoned(ctx * heads * v);
  SplitMlaKv(dkv.data(), dlat.data(), ctx, heads, nope, v, lora, rope, k.data(), vv.data(),
             stream_);
  const auto gk = Down(k, ctx * heads * (nope + rope)), gv = Down(vv, ctx * heads * v);
  for (int64_t t = 0; t < ctx; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      const float* src = kv.data() + (t * heads + h) * (nope + v);
      const float* kr = gk.data() + (t * heads + h) * (nope + rope);
      for (int64_t i = 0; i < nope; ++i) ASSERT_EQ(kr[i], src[i]);
      for (int64_t i = 0; i < rope; ++i)
        ASSERT_EQ(kr[nope + i], latent[t * (lora + rope) + lora + i]);
      for (int64_t i = 0; i < v; ++i) ASSERT_EQ(gv[(t * heads + h) * v + i], src[nope + i]);
    }
  }
}

TEST_F(CudaOpsTest, RoutingMatchesTheCpuRouter) {
  for (const char* preset : {"tiny-dsv3", "tiny-kimi-k2"}) {
    for (bool softmax : {false, true}) {
      ModelConfig c = *PresetConfig(preset);
      if (softmax) {
        c.scoring_func = "softmax";
        c.topk_method = "group_limited_greedy";
      }
      const int64_t n = 33, E = c.n_routed_experts, k = c.num_experts_per_tok;
      const auto logits = Random(n * E, 2.0f), bias = Random(E, 0.1f);
      const float* b = c.topk_method == "noaux_tc" ? bias.data() : nullptr;
      auto dl = Up(logits), db = Up(bias);
      DeviceBuffer<int32_t> ids;
      ASSERT_TRUE(ids.Allocate(n * k).ok());
      auto w = Poisoned(n * k);
      RouteTokens(dl.data(), b ? db.data() : nullptr, n, RouterParamsFor(c), ids.data(), w.data(),
                  stream_);
      std::vector<int32_t> want_ids(n * k);
      std::vector<float> want_w(n * k);
      moe::RouteTokens(c, logits.data(), b, n, want_ids.data(), want_w.data());
      EXPECT_EQ(Down(ids, n * k), want_ids) << preset << (softmax ? " softmax" : "");
      EXPECT_LE(RelativeError(Down(w, n * k), want_w), 1e-5);
    }
  }
}

// Each format's product against the CPU kernel (kernels/cpu/weight_matmul.h, itself checked
// against a double-precision product): windows that cut fp8 blocks and start inside the tensor,
// strided x and y, the few-row kernel (m <= 8) and the tiled one. The compact formats stay
// compact on the device.
TEST_F(CudaOpsTest, CompactWeightProductsMatchTheCpuKernels) {
  struct Cut {
    int64_t r0, rows, c0, cols;
  };
  for (WeightFormat f : {WeightFormat::kBF16, WeightFormat::kF8Block, WeightFormat::kInt4Group}) {
    const Stored stored = MakeStored(f, 300, 384, rng_());
    const int64_t c0 = f == WeightFormat::kInt4Group ? 128 : 96;
    for (const Cut& win :
         {Cut{0, 300, 0, 384}, Cut{37, 150, 0, 384}, Cut{0, 300, c0, 384 - c0 - 32}}) {
      const WeightMatrix w = Window(f, stored, win.r0, win.rows, win.c0, win.cols);
      auto d = DeviceWeight::Upload(w);
      ASSERT_TRUE(d.ok()) << d.status();
      EXPECT_EQ(d->format(), f);
      EXPECT_EQ(d->bytes(), w.bytes()) << "the device copy is not the window's bytes";
      for (int64_t m : {1, 5, 8, 9, 40}) {
        const int64_t ldx = win.cols + 3, ldy = win.rows + 5;
        const auto x = Random(m * ldx);
        auto dx = Up(x);
        auto dy = Poisoned(m * ldy);
        WeightLinear(dx.data(), m, ldx, d->view(), dy.data(), ldy, stream_);
        std::vector<float> want(m * ldy, 0.0f);
        cpu::MatMulNT(m, x.data(), ldx, w, want.data(), ldy);
        const auto y = Down(dy, m * ldy);
        std::vector<float> got_rows, want_rows;
        for (int64_t i = 0; i < m; ++i) {
          got_rows.insert(got_rows.end(), y.begin() + i * ldy, y.begin() + i * ldy + win.rows);
          want_rows.insert(want_rows.end(), want.begin() + i * ldy,
                           want.begin() + i * ldy + win.rows);
        }
        EXPECT_LE(RelativeError(got_rows, want_rows), 1e-5)
            << WeightFormatName(f) << " window at (" << win.r0 << ", " << win.c0 << "), m " << m;
      }
    }
  }
}

// Linear takes cuBLAS for bf16 and the in-register product for fp8; an fp8 weight uploaded as
// bf16 (MLA's kv_b_proj) is its dequantized values rounded.
TEST_F(CudaOpsTest, LinearPicksTheProductOfTheFormat) {
  const Stored stored = MakeStored(WeightFormat::kF8Block, 200, 256, rng_());
  const WeightMatrix w = All(WeightFormat::kF8Block, stored);
  auto fp8 = DeviceWeight::Upload(w);
  auto rounded = DeviceWeight::Upload(w, /*as_bf16=*/true);
  ASSERT_TRUE(fp8.ok() && rounded.ok());
  EXPECT_EQ(rounded->format(), WeightFormat::kBF16);
  EXPECT_EQ(rounded->bytes(), 200u * 256 * 2);
  const int64_t m = 12;
  const auto x = Random(m * 256);
  auto dx = Up(x);
  DeviceBuffer<bf16> scratch;
  ASSERT_TRUE(scratch.Allocate(m * 256).ok());
  std::vector<float> want(m * 200);
  cpu::MatMulNT(m, x.data(), 256, w, want.data(), 200);
  auto y = Poisoned(m * 200);
  ASSERT_TRUE(Linear(blas_, dx.data(), m, fp8->view(), y.data(), scratch.data(), stream_).ok());
  EXPECT_LE(RelativeError(Down(y, m * 200), want), 1e-5);
  // bf16 operands: x and the weights each rounded once.
  std::vector<float> dense(200 * 256);
  cpu::DequantizeRows(w, 0, 200, dense.data());
  const auto xr = RoundBf16(x), wr = RoundBf16(dense);
  cpu::MatMulNT(m, 200, 256, xr.data(), 256, wr.data(), 256, want.data(), 200);
  auto yb = Poisoned(m * 200);
  ASSERT_TRUE(
      Linear(blas_, dx.data(), m, rounded->view(), yb.data(), scratch.data(), stream_).ok());
  EXPECT_LE(RelativeError(Down(yb, m * 200), want), 1e-4);
}

TEST_F(CudaOpsTest, PermutedGroupedExpertsMatchADirectMoe) {
  const int64_t n = 21, k = 3, E = 6, h = 64, out_dim = 24;
  std::vector<int32_t> ids(n * k);
  std::vector<int32_t> all(E);
  std::iota(all.begin(), all.end(), 0);
  for (int64_t t = 0; t < n; ++t) {
    std::shuffle(all.begin(), all.end(), rng_);
    for (int64_t j = 0; j < k; ++j) ids[t * k + j] = all[j];
  }
  for (int64_t j = 0; j < k; ++j) ids[5 * k + j] = 2;  // an expert chosen thrice by one token
  ids[0] = 4;
  std::vector<float> weights(n * k);
  for (float& w : weights) w = std::uniform_real_distribution<float>(0.1f, 1.0f)(rng_);
  const auto x = Random(n * h);
  for (WeightFormat f : {WeightFormat::kBF16, WeightFormat::kF8Block, WeightFormat::kInt4Group}) {
    std::vector<Stored> w;
    std::vector<DeviceWeight> dw;
    std::vector<WeightView> views;
    for (int64_t e = 0; e < E; ++e) {
      w.push_back(MakeStored(f, out_dim, h, rng_()));
      auto d = DeviceWeight::Upload(All(f, w.back()));
      ASSERT_TRUE(d.ok()) << d.status();
      views.push_back(d->view());
      dw.push_back(std::move(*d));
    }
    auto dviews = Up(views);
    auto dids = Up(ids);
    auto dx = Up(x), dweights = Up(weights);
    DeviceBuffer<int32_t> offsets, sorted_token, row_of;
    ASSERT_TRUE(offsets.Allocate(E + 1).ok() && sorted_token.Allocate(n * k).ok() &&
                row_of.Allocate(n * k).ok());
    PermuteByExpert(dids.data(), n, k, E, offsets.data(), sorted_token.data(), row_of.data(),
                    stream_);
    auto gathered = Poisoned(n * k * h);
    GatherRows(dx.data(), sorted_token.data(), n * k, h, gathered.data(), stream_);
    // Written into the second half of rows twice as wide, as the gate/up products are.
    auto y = Poisoned(n * k * 2 * out_dim);
    GroupedWeightLinear(gathered.data(), offsets.data(), E, f, dviews.data(), out_dim, h,
                        y.data() + out_dim, 2 * out_dim, stream_);
    const auto wide = Down(y, n * k * 2 * out_dim);
    for (int64_t r = 0; r < n * k; ++r) {
      EXPECT_TRUE(std::isnan(wide[r * 2 * out_dim])) << "wrote outside its columns";
    }
    std::vector<float> compact(n * k * out_dim);
    for (int64_t r = 0; r < n * k; ++r) {
      std::copy_n(wide.begin() + r * 2 * out_dim + out_dim, out_dim, compact.begin() + r * out_dim);
    }
    auto dcompact = Up(compact);
    auto out = Poisoned(n * out_dim);
    CombineRows(dcompact.data(), row_of.data(), dweights.data(), n, k, out_dim, out.data(), false,
                stream_);
    std::vector<float> want(n * out_dim, 0.0f), row(out_dim);
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t j = 0; j < k; ++j) {
        const int32_t e = ids[t * k + j];
        cpu::MatMulNT(1, x.data() + t * h, h, All(f, w[e]), row.data(), out_dim);
        for (int64_t c = 0; c < out_dim; ++c) want[t * out_dim + c] += weights[t * k + j] * row[c];
      }
    }
    EXPECT_LE(RelativeError(Down(out, want.size()), want), 1e-5) << WeightFormatName(f);
    // Rows are grouped by expert, in (token, slot) order within an expert.
    const auto off = Down(offsets, E + 1);
    for (int64_t e = 0; e < E; ++e) {
      const auto chosen = std::count(ids.begin(), ids.end(), static_cast<int32_t>(e));
      EXPECT_EQ(off[e + 1] - off[e], chosen);
    }
  }
}

TEST_F(CudaOpsTest, SamplingPicksTheCpuSamplersTokens) {
  const int64_t vocab = 1000;
  std::vector<SampleRequest> specs;
  for (uint64_t i = 0; i < 64; ++i) {
    SampleRequest s;
    s.spec.temperature = i % 8 == 0 ? 0.0f : 0.3f + 0.1f * (i % 10);
    s.spec.top_k = static_cast<int32_t>(i % 3 == 0 ? 0 : (i % 7) * 20 + 1);
    s.spec.top_p = i % 4 == 0 ? 1.0f : 0.5f + 0.1f * (i % 5);
    s.spec.seed = 1000 + i;
    s.index = i * 3;
    specs.push_back(s);
  }
  const int64_t rows = static_cast<int64_t>(specs.size());
  auto logits = Random(rows * vocab, 2.0f);
  for (int64_t c = 0; c < 10; ++c) logits[c] = logits[20 + c];  // ties in the first row
  auto dl = Up(logits);
  auto ds = Up(specs);
  DeviceBuffer<int32_t> out;
  ASSERT_TRUE(out.Allocate(rows).ok());
  Sample(dl.data(), rows, vocab, ds.data(), out.data(), stream_);
  const auto got = Down(out, rows);
  for (int64_t r = 0; r < rows; ++r) {
    const SampleRequest& s = specs[r];
    EXPECT_EQ(got[r], moe::SampleToken(logits.data() + r * vocab, vocab, s.spec, s.index))
        << "row " << r;
  }
}

}  // namespace
}  // namespace moe::cuda
