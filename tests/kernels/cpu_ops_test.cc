// CPU kernels against direct double-precision computations.
#include <cmath>
#include <complex>
#include <functional>
#include <random>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"
#include "tests/test_util.h"

namespace moe::cpu {
namespace {

using moe::testing::Random;

TEST(CpuOpsTest, MatMulNTAndNNMatchNaive) {
  for (auto [m, n, k] :
       std::vector<std::tuple<int, int, int>>{{1, 7, 5}, {3, 4, 9}, {17, 33, 64}}) {
    const auto x = Random(m * k, 1), w = Random(n * k, 2), wt = Random(k * n, 3);
    std::vector<float> y(m * n, 1.0f), z(m * n, 1.0f);
    MatMulNT(m, n, k, x.data(), k, w.data(), k, y.data(), n);
    MatMulNN(m, n, k, x.data(), k, wt.data(), n, z.data(), n);
    for (int i = 0; i < m; ++i) {
      for (int j = 0; j < n; ++j) {
        double a = 0, b = 0;
        for (int p = 0; p < k; ++p) {
          a += static_cast<double>(x[i * k + p]) * w[j * k + p];
          b += static_cast<double>(x[i * k + p]) * wt[p * n + j];
        }
        EXPECT_NEAR(y[i * n + j], a, 1e-4);
        EXPECT_NEAR(z[i * n + j], b, 1e-4);
      }
    }
  }
}

// Few-row products take their own kernel (m <= 8): every row count, column counts that do not
// divide into its passes, k with a vector tail, strided operands, beta, and 1 to 3 threads.
TEST(CpuOpsTest, FewRowProductsMatchNaive) {
  const int saved = NumThreads();
  for (int threads : {1, 2, 3}) {
    SetNumThreads(threads);
    for (int m = 2; m <= 9; ++m) {
      for (auto [n, k] : std::vector<std::pair<int, int>>{{1, 3}, {7, 37}, {64, 64}, {131, 70}}) {
        const int ldx = k + 3, ldw = k + 5, ldy = n + 2;
        const auto x = Random(m * ldx, 10 + m), w = Random(n * ldw, 20 + n);
        for (float beta : {0.0f, 1.0f}) {
          std::vector<float> y(m * ldy, 0.5f);
          MatMulNT(m, n, k, x.data(), ldx, w.data(), ldw, y.data(), ldy, beta);
          for (int i = 0; i < m; ++i) {
            for (int j = 0; j < n; ++j) {
              double want = beta * 0.5;
              for (int p = 0; p < k; ++p)
                want += static_cast<double>(x[i * ldx + p]) * w[j * ldw + p];
              ASSERT_NEAR(y[i * ldy + j], want, 1e-4)
                  << m << "x" << n << "x" << k << " beta " << beta << " threads " << threads;
            }
            for (int j = n; j < ldy; ++j) ASSERT_EQ(y[i * ldy + j], 0.5f) << "wrote past n";
          }
        }
      }
    }
  }
  SetNumThreads(saved);
}

TEST(CpuOpsTest, MatMulAccumulatesWithBeta) {
  const auto x = Random(2 * 3, 4), w = Random(4 * 3, 5);
  std::vector<float> y(8, 2.0f), ref(8);
  MatMulNT(2, 4, 3, x.data(), 3, w.data(), 3, ref.data(), 4);
  MatMulNT(2, 4, 3, x.data(), 3, w.data(), 3, y.data(), 4, 1.0f);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(y[i], ref[i] + 2.0f, 1e-5);
}

TEST(CpuOpsTest, RmsNorm) {
  const auto x = Random(3 * 10, 6), w = Random(10, 7);
  std::vector<float> y(30);
  RmsNorm(x.data(), 3, 10, 10, w.data(), 1e-6f, y.data());
  for (int r = 0; r < 3; ++r) {
    double ss = 0;
    for (int i = 0; i < 10; ++i) ss += static_cast<double>(x[r * 10 + i]) * x[r * 10 + i];
    const double inv = 1 / std::sqrt(ss / 10 + 1e-6);
    for (int i = 0; i < 10; ++i) EXPECT_NEAR(y[r * 10 + i], w[i] * x[r * 10 + i] * inv, 1e-5);
  }
}

TEST(CpuOpsTest, SiluAndMul) {
  const auto gu = Random(2 * 8, 8);
  std::vector<float> out(8);
  SiluAndMul(gu.data(), 2, 4, out.data());
  for (int r = 0; r < 2; ++r) {
    for (int i = 0; i < 4; ++i) {
      const double g = gu[r * 8 + i], u = gu[r * 8 + 4 + i];
      EXPECT_NEAR(out[r * 4 + i], g / (1 + std::exp(-g)) * u, 1e-6);
    }
  }
}

TEST(CpuOpsTest, SoftmaxIsStableForLargeInputs) {
  std::vector<float> x = {1000.0f, 1001.0f, 999.0f};
  SoftmaxInPlace(x.data(), 3);
  const double z = std::exp(-1.0) + 1 + std::exp(-2.0);
  EXPECT_NEAR(x[1], 1 / z, 1e-6);
  EXPECT_NEAR(x[0] + x[1] + x[2], 1.0, 1e-6);
}

TEST(CpuOpsTest, RopeInterleavedIsComplexRotation) {
  // DeepSeek's formulation: pairs as complex numbers times e^{i theta}.
  auto x = Random(8, 9);
  const std::vector<float> theta = {0.3f, -1.2f, 2.5f, 0.01f};
  std::vector<float> cos(4), sin(4);
  for (int i = 0; i < 4; ++i) {
    cos[i] = std::cos(theta[i]);
    sin[i] = std::sin(theta[i]);
  }
  const auto orig = x;
  RopeInterleaved(x.data(), 8, cos.data(), sin.data());
  for (int i = 0; i < 4; ++i) {
    const std::complex<double> z =
        std::complex<double>(orig[2 * i], orig[2 * i + 1]) * std::polar(1.0, double(theta[i]));
    EXPECT_NEAR(x[2 * i], z.real(), 1e-6);
    EXPECT_NEAR(x[2 * i + 1], z.imag(), 1e-6);
  }
}

TEST(CpuOpsTest, CausalAttentionMatchesNaive) {
  const int q_len = 5, start = 3, ctx = start + q_len, heads = 2, dqk = 6, dv = 4;
  const auto q = Random(q_len * heads * dqk, 10), k = Random(ctx * heads * dqk, 11),
             v = Random(ctx * heads * dv, 12);
  std::vector<float> out(q_len * heads * dv);
  CausalAttention(q.data(), k.data(), v.data(), q_len, ctx, heads, dqk, dv, start, 0.4f,
                  out.data());
  for (int i = 0; i < q_len; ++i) {
    for (int h = 0; h < heads; ++h) {
      std::vector<double> p;
      double z = 0;
      for (int t = 0; t <= start + i; ++t) {
        double s = 0;
        for (int d = 0; d < dqk; ++d)
          s += q[(i * heads + h) * dqk + d] * k[(t * heads + h) * dqk + d];
        p.push_back(std::exp(0.4 * s));
        z += p.back();
      }
      for (int d = 0; d < dv; ++d) {
        double o = 0;
        for (int t = 0; t <= start + i; ++t) o += p[t] / z * v[(t * heads + h) * dv + d];
        EXPECT_NEAR(out[(i * heads + h) * dv + d], o, 1e-5);
      }
    }
  }
}

TEST(CpuOpsTest, RopeHalvesRotatesPairsHalfADimensionApart) {
  // Llama's rotate_half form: x * cos + rotate_half(x) * sin, cos/sin repeated over both halves.
  auto x = Random(8, 19);
  const std::vector<float> theta = {0.3f, -1.2f, 2.5f, 0.01f};
  std::vector<float> cos(4), sin(4);
  for (int i = 0; i < 4; ++i) {
    cos[i] = std::cos(theta[i]);
    sin[i] = std::sin(theta[i]);
  }
  const auto orig = x;
  RopeHalves(x.data(), 8, cos.data(), sin.data());
  for (int i = 0; i < 8; ++i) {
    const double rotated = i < 4 ? -orig[i + 4] : orig[i - 4];  // rotate_half(x)[i]
    const double c = std::cos(double(theta[i % 4])), sn = std::sin(double(theta[i % 4]));
    EXPECT_NEAR(x[i], orig[i] * c + rotated * sn, 1e-6);
  }
}

// Grouped-query attention, naive: query head h reads K/V head h / (heads / kv_heads).
// Keys first .. visible - 1.
double GqaNaive(const std::vector<float>& q, int qi, int h, int heads, int kv_heads, int d,
                int visible, const std::function<const float*(int)>& key,
                const std::function<const float*(int)>& value, float scale, int out_d,
                int first = 0) {
  const int g = h / (heads / kv_heads);
  std::vector<double> p(static_cast<size_t>(first), 0.0);
  double z = 0;
  for (int t = first; t < visible; ++t) {
    double s = 0;
    for (int i = 0; i < d; ++i) s += q[(qi * heads + h) * d + i] * key(t)[g * d + i];
    p.push_back(std::exp(scale * s));
    z += p.back();
  }
  double o = 0;
  for (int t = first; t < visible; ++t) o += p[t] / z * value(t)[g * d + out_d];
  return o;
}

TEST(CpuOpsTest, GroupedCausalAttentionMatchesNaive) {
  const int q_len = 5, start = 3, ctx = start + q_len, heads = 6, kv_heads = 2, d = 4;
  const auto q = Random(q_len * heads * d, 20), k = Random(ctx * kv_heads * d, 21),
             v = Random(ctx * kv_heads * d, 22);
  std::vector<float> out(q_len * heads * d);
  GroupedCausalAttention(q.data(), k.data(), v.data(), q_len, ctx, heads, kv_heads, d, d, start,
                         0.4f, out.data());
  auto key = [&](int t) { return &k[t * kv_heads * d]; };
  auto value = [&](int t) { return &v[t * kv_heads * d]; };
  for (int i = 0; i < q_len; ++i) {
    for (int h = 0; h < heads; ++h) {
      for (int j = 0; j < d; ++j) {
        EXPECT_NEAR(out[(i * heads + h) * d + j],
                    GqaNaive(q, i, h, heads, kv_heads, d, start + i + 1, key, value, 0.4f, j),
                    1e-5);
      }
    }
  }
}

TEST(CpuOpsTest, SlidingWindowAttentionSeesOnlyTheLastWindowKeys) {
  const int q_len = 6, start = 4, ctx = start + q_len, heads = 4, kv_heads = 2, d = 4, window = 3;
  const auto q = Random(q_len * heads * d, 25), k = Random(ctx * kv_heads * d, 26),
             v = Random(ctx * kv_heads * d, 27);
  std::vector<float> out(q_len * heads * d);
  GroupedCausalAttention(q.data(), k.data(), v.data(), q_len, ctx, heads, kv_heads, d, d, start,
                         0.4f, out.data(), window);
  // The same keys and values as a paged cache of one block per position, read by the decode kernel.
  const int row = 2 * kv_heads * d;
  std::vector<float> cache(ctx * row);
  std::vector<int32_t> blocks(ctx);
  for (int t = 0; t < ctx; ++t) {
    blocks[t] = ctx - 1 - t;  // reversed
    std::copy(&k[t * kv_heads * d], &k[(t + 1) * kv_heads * d], &cache[blocks[t] * row]);
    std::copy(&v[t * kv_heads * d], &v[(t + 1) * kv_heads * d],
              &cache[blocks[t] * row + kv_heads * d]);
  }
  auto key = [&](int t) { return &k[t * kv_heads * d]; };
  auto value = [&](int t) { return &v[t * kv_heads * d]; };
  for (int i = 0; i < q_len; ++i) {
    const int sees = start + i + 1, first = std::max(0, sees - window);
    std::vector<float> decoded(heads * d);
    GqaDecodeAttention(&q[i * heads * d], heads, kv_heads, d, cache.data(), blocks.data(), 1, sees,
                       0.4f, decoded.data(), window);
    for (int h = 0; h < heads; ++h) {
      for (int j = 0; j < d; ++j) {
        const double want = GqaNaive(q, i, h, heads, kv_heads, d, sees, key, value, 0.4f, j, first);
        EXPECT_NEAR(out[(i * heads + h) * d + j], want, 1e-5);
        EXPECT_NEAR(decoded[h * d + j],
                    GqaNaive(std::vector<float>(&q[i * heads * d], &q[(i + 1) * heads * d]), 0, h,
                             heads, kv_heads, d, sees, key, value, 0.4f, j, first),
                    1e-5);
      }
    }
  }
}

TEST(CpuOpsTest, ChunkedAttentionSeesOnlyItsOwnChunk) {
  EXPECT_EQ(FirstVisibleKey(7, 0, 4), 4);  // chunk [4, 8)
  EXPECT_EQ(FirstVisibleKey(8, 0, 4), 8);  // a chunk's first query sees itself only
  EXPECT_EQ(FirstVisibleKey(9, 3, 0), 7);  // window of 3: 7, 8, 9
  EXPECT_EQ(FirstVisibleKey(1, 3, 0), 0);
  const int q_len = 9, start = 2, ctx = start + q_len, heads = 2, kv_heads = 1, d = 4, chunk = 4;
  const auto q = Random(q_len * heads * d, 29), k = Random(ctx * kv_heads * d, 30),
             v = Random(ctx * kv_heads * d, 31);
  std::vector<float> out(q_len * heads * d);
  GroupedCausalAttention(q.data(), k.data(), v.data(), q_len, ctx, heads, kv_heads, d, d, start,
                         0.5f, out.data(), 0, chunk);
  auto key = [&](int t) { return &k[t * kv_heads * d]; };
  auto value = [&](int t) { return &v[t * kv_heads * d]; };
  for (int i = 0; i < q_len; ++i) {
    const int pos = start + i, first = pos / chunk * chunk;
    for (int h = 0; h < heads; ++h) {
      for (int j = 0; j < d; ++j) {
        EXPECT_NEAR(out[(i * heads + h) * d + j],
                    GqaNaive(q, i, h, heads, kv_heads, d, pos + 1, key, value, 0.5f, j, first),
                    1e-5);
      }
    }
  }
}

TEST(CpuOpsTest, GeluTanhAndMulMatchesTheFormula) {
  const int rows = 3, inter = 5;
  const auto gate_up = Random(rows * 2 * inter, 28);
  std::vector<float> out(rows * inter);
  GeluTanhAndMul(gate_up.data(), rows, inter, out.data());
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < inter; ++i) {
      const double g = gate_up[r * 2 * inter + i], u = gate_up[r * 2 * inter + inter + i];
      const double gelu =
          0.5 * g * (1 + std::tanh(std::sqrt(2 / M_PI) * (g + 0.044715 * g * g * g)));
      EXPECT_NEAR(out[r * inter + i], gelu * u, 1e-6);
    }
  }
}

TEST(CpuOpsTest, GqaDecodeOverPagedCacheMatchesNaive) {
  const int heads = 8, kv_heads = 2, d = 6, bs = 4, ctx = 11, row = 2 * kv_heads * d;
  const std::vector<int32_t> blocks = {2, 0, 3};  // scattered blocks
  const auto cache = Random(4 * bs * row, 23), q = Random(heads * d, 24);
  std::vector<float> out(heads * d);
  GqaDecodeAttention(q.data(), heads, kv_heads, d, cache.data(), blocks.data(), bs, ctx, 0.3f,
                     out.data());
  auto key = [&](int t) { return &cache[(blocks[t / bs] * bs + t % bs) * row]; };
  auto value = [&](int t) { return &cache[(blocks[t / bs] * bs + t % bs) * row + kv_heads * d]; };
  for (int h = 0; h < heads; ++h) {
    for (int j = 0; j < d; ++j) {
      EXPECT_NEAR(out[h * d + j], GqaNaive(q, 0, h, heads, kv_heads, d, ctx, key, value, 0.3f, j),
                  1e-5);
    }
  }
}

// The absorption identity: attention with expanded per-head keys k = [W_UK c | k_pe] and values
// v = W_UV c equals attention of the absorbed query over the latent rows, then W_UV; on the
// calling thread and with the positions split into parts of whole blocks (more parts than blocks:
// one per block).
TEST(CpuOpsTest, MlaDecodeEqualsExpandedAttention) {
  for (int parts : {1, 2, 3, 5}) {
    SCOPED_TRACE(parts);
    const int heads = 3, lora = 8, rope = 4, nope = 5, vdim = 6, bs = 4, ctx = 11;
    const int row = lora + rope;
    const std::vector<int32_t> blocks = {2, 0, 3};  // scattered blocks
    auto cache = Random(4 * bs * row, 13);
    const auto w_uk = Random(heads * nope * lora, 14), w_uv = Random(heads * vdim * lora, 15);
    const auto q_nope = Random(heads * nope, 16), q_pe = Random(heads * rope, 17);
    auto latent = [&](int t) { return &cache[(blocks[t / bs] * bs + t % bs) * row]; };
    // Absorbed query.
    std::vector<float> q(heads * row);
    for (int h = 0; h < heads; ++h) {
      for (int c = 0; c < lora; ++c) {
        double s = 0;
        for (int n = 0; n < nope; ++n) s += q_nope[h * nope + n] * w_uk[(h * nope + n) * lora + c];
        q[h * row + c] = static_cast<float>(s);
      }
      for (int r = 0; r < rope; ++r) q[h * row + lora + r] = q_pe[h * rope + r];
    }
    std::vector<float> o_lat(heads * lora);
    const float scale = 0.3f;
    MlaDecodeAttention(q.data(), heads, lora, rope, cache.data(), blocks.data(), bs, ctx, scale,
                       o_lat.data(), parts);
    for (int h = 0; h < heads; ++h) {
      std::vector<double> p(ctx);
      double z = 0;
      for (int t = 0; t < ctx; ++t) {
        const float* l = latent(t);
        double s = 0;
        for (int n = 0; n < nope; ++n) {
          double k = 0;
          for (int c = 0; c < lora; ++c) k += w_uk[(h * nope + n) * lora + c] * l[c];
          s += q_nope[h * nope + n] * k;
        }
        for (int r = 0; r < rope; ++r) s += q_pe[h * rope + r] * l[lora + r];
        p[t] = std::exp(scale * s);
        z += p[t];
      }
      for (int d = 0; d < vdim; ++d) {
        double expanded = 0, absorbed = 0;
        for (int t = 0; t < ctx; ++t) {
          double v = 0;
          for (int c = 0; c < lora; ++c) v += w_uv[(h * vdim + d) * lora + c] * latent(t)[c];
          expanded += p[t] / z * v;
        }
        for (int c = 0; c < lora; ++c)
          absorbed += w_uv[(h * vdim + d) * lora + c] * o_lat[h * lora + c];
        EXPECT_NEAR(absorbed, expanded, 1e-4);
      }
    }
  }
}

}  // namespace
}  // namespace moe::cpu
