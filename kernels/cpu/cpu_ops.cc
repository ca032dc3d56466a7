#include "kernels/cpu/cpu_ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/status_macros.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/router.h"
#include "kernels/cpu/sampler.h"
#include "kernels/cpu/weight_matmul.h"

namespace moe {

DeviceArray<float> CpuOps::Allocate(int64_t n) {
  auto v = std::make_shared<FloatVector>(static_cast<size_t>(n));
  float* data = v->data();
  return DeviceArray<float>(Device::kCpu, data, n, std::move(v));
}

DeviceArray<int32_t> CpuOps::AllocateInts(int64_t n) {
  auto v = std::make_shared<std::vector<int32_t>>(static_cast<size_t>(n));
  int32_t* data = v->data();
  return DeviceArray<int32_t>(Device::kCpu, data, n, std::move(v));
}

DeviceArray<int64_t> CpuOps::AllocateCounts(int64_t n) {
  auto v = std::make_shared<std::vector<int64_t>>(static_cast<size_t>(n), 0);
  int64_t* data = v->data();
  return DeviceArray<int64_t>(Device::kCpu, data, n, std::move(v));
}

DeviceArray<float> CpuOps::Place(Tensor t) {
  auto owned = std::make_shared<Tensor>(std::move(t));
  float* data = owned->data();
  const int64_t n = owned->numel();
  return DeviceArray<float>(Device::kCpu, data, n, std::move(owned));
}

DeviceArray<int32_t> CpuOps::Place(std::vector<int32_t> v) {
  auto owned = std::make_shared<std::vector<int32_t>>(std::move(v));
  int32_t* data = owned->data();
  const auto n = static_cast<int64_t>(owned->size());
  return DeviceArray<int32_t>(Device::kCpu, data, n, std::move(owned));
}

absl::StatusOr<PlacedMatrix> CpuOps::Place(WeightMatrix w) {
  return PlacedMatrix{std::move(w), {}};
}

void CpuOps::CopyToHost(const void* src, size_t bytes, void* dst) {
  if (bytes > 0 && src != dst) std::memcpy(dst, src, bytes);
}

void CpuOps::CopyFromHost(const void* src, size_t bytes, void* dst) { CopyToHost(src, bytes, dst); }

void CpuOps::Fill(float* y, int64_t n, float value) { std::fill(y, y + n, value); }

void CpuOps::CopyRows(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst,
                      int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(dst + r * ldd, src + r * lds, static_cast<size_t>(cols) * sizeof(float));
  }
}

void CpuOps::GatherRows(const float* x, const int32_t* index, int64_t n, int64_t dim, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    float* dst = out + i * dim;
    if (index[i] < 0) {
      std::fill(dst, dst + dim, 0.0f);
    } else {
      std::memcpy(dst, x + static_cast<int64_t>(index[i]) * dim,
                  static_cast<size_t>(dim) * sizeof(float));
    }
  }
}

void CpuOps::ScatterRows(const float* x, const int32_t* index, int64_t n, int64_t dim, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(out + static_cast<int64_t>(index[i]) * dim, x + i * dim,
                static_cast<size_t>(dim) * sizeof(float));
  }
}

void CpuOps::AddScaledRows(const float* x, const float* scales, const int32_t* index, int64_t n,
                           int64_t dim, float* y) {
  for (int64_t i = 0; i < n; ++i) {
    float* dst = y + static_cast<int64_t>(index[i]) * dim;
    const float* src = x + i * dim;
    const float s = scales == nullptr ? 1.0f : scales[i];
    for (int64_t c = 0; c < dim; ++c) dst[c] += s * src[c];
  }
}

void CpuOps::ScaleRows(float* x, const float* scales, int64_t n, int64_t dim) {
  for (int64_t i = 0; i < n; ++i) cpu::Scale(x + i * dim, scales[i], dim);
}

void CpuOps::Add(float* y, const float* x, int64_t n) { cpu::Add(y, x, n); }
void CpuOps::Scale(float* y, float a, int64_t n) { cpu::Scale(y, a, n); }

void CpuOps::AddToRows(float* y, int64_t rows, int64_t dim, int64_t ld, const float* bias) {
  for (int64_t r = 0; r < rows; ++r) cpu::Add(y + r * ld, bias, dim);
}

void CpuOps::SoftCap(float* x, int64_t n, float cap) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::tanh(x[i] / cap) * cap;
}

void CpuOps::RmsNorm(const float* x, int64_t rows, int64_t dim, int64_t ld, const float* weight,
                     float eps, float* y) {
  cpu::RmsNorm(x, rows, dim, ld, weight, eps, y);
}

void CpuOps::RowSumSquares(const float* x, int64_t rows, int64_t dim, int64_t ld, float* out) {
  for (int64_t t = 0; t < rows; ++t) {
    const float* r = x + t * ld;
    float s = 0.0f;
    for (int64_t i = 0; i < dim; ++i) s += r[i] * r[i];
    out[t] = s;
  }
}

void CpuOps::NormalizeRows(float* x, int64_t rows, int64_t dim, int64_t ld, const float* sumsq,
                           float replication, float width, float eps, const float* weight) {
  for (int64_t t = 0; t < rows; ++t) {
    float* r = x + t * ld;
    const float inv = 1.0f / std::sqrt(sumsq[t] / replication / width + eps);
    for (int64_t i = 0; i < dim; ++i) r[i] = r[i] * inv * weight[i];
  }
}

void CpuOps::GatedActivation(const float* gate_up, int64_t rows, int64_t inter, Activation act,
                             float* out) {
  if (act == Activation::kGeluTanh) {
    cpu::GeluTanhAndMul(gate_up, rows, inter, out);
  } else {
    cpu::SiluAndMul(gate_up, rows, inter, out);
  }
}

void CpuOps::Rope(float* x, int64_t rows, int64_t heads, int64_t row_stride, int64_t head_stride,
                  int64_t dim, const float* cos, const float* sin, bool interleaved) {
  const auto rotate = interleaved ? cpu::RopeInterleaved : cpu::RopeHalves;
  const int64_t half = dim / 2;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      rotate(x + r * row_stride + h * head_stride, dim, cos + r * half, sin + r * half);
    }
  }
}

void CpuOps::Linear(const PlacedMatrix& w, const float* x, int64_t n, int64_t ldx, float* y,
                    int64_t ldy) {
  cpu::MatMulNT(n, x, ldx, w.host, y, ldy);
}

void CpuOps::MatMulNT(int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx, const float* w,
                      int64_t ldw, float* y, int64_t ldy) {
  cpu::MatMulNT(m, n, k, x, ldx, w, ldw, y, ldy);
}

void CpuOps::Embedding(const PlacedMatrix& table, int64_t first_row, const int32_t* tokens,
                       int64_t n, float* out) {
  const int64_t dim = table.cols();
  for (int64_t i = 0; i < n; ++i) {
    float* dst = out + i * dim;
    const int64_t r = tokens[i] - first_row;
    if (r >= 0 && r < table.rows()) {
      cpu::DequantizeRows(table.host, r, r + 1, dst);
    } else {
      std::fill(dst, dst + dim, 0.0f);
    }
  }
}

void CpuOps::CausalAttention(const float* q, const float* k, const float* v, int64_t q_len,
                             int64_t ctx, int64_t heads, int64_t kv_heads, int64_t dqk, int64_t dv,
                             int64_t start, float scale, float* out, int64_t window,
                             int64_t chunk) {
  cpu::GroupedCausalAttention(q, k, v, q_len, ctx, heads, kv_heads, dqk, dv, start, scale, out,
                              window, chunk);
}

void CpuOps::SplitMlaKv(const float* kv, const float* latent, int64_t ctx, int64_t heads,
                        int64_t nope, int64_t v_dim, int64_t kv_lora, int64_t rope, float* k,
                        float* v) {
  const int64_t kvh = nope + v_dim, qk = nope + rope, dim = kv_lora + rope;
  for (int64_t t = 0; t < ctx; ++t) {
    for (int64_t hd = 0; hd < heads; ++hd) {
      const float* src = kv + (t * heads + hd) * kvh;
      float* kd = k + (t * heads + hd) * qk;
      std::memcpy(kd, src, static_cast<size_t>(nope) * sizeof(float));
      std::memcpy(kd + nope, latent + t * dim + kv_lora, static_cast<size_t>(rope) * sizeof(float));
      std::memcpy(v + (t * heads + hd) * v_dim, src + nope,
                  static_cast<size_t>(v_dim) * sizeof(float));
    }
  }
}

void CpuOps::MlaDecode(const MlaDecodeShape& s, const float* q, int64_t b,
                       const PlacedMatrix& kv_b_proj, const float* cache,
                       const int32_t* block_tables, const int32_t* context, float* out) {
  const int64_t heads = s.heads, nope = s.nope, rope = s.rope, v_dim = s.v_dim;
  const int64_t kv_lora = s.kv_lora, qk = nope + rope, dim = kv_lora + rope, kvh = nope + v_dim;
  const WeightMatrix& w = kv_b_proj.host;
  MOE_CHECK(w.rows == heads * kvh && w.cols == kv_lora);
  // Rows [r0, r0 + rows) of kv_b_proj as float32: in place for float32 weights, else decoded
  // into `panel` (each row is decoded once per call: W_UK's rows for the queries, W_UV's for
  // the output).
  const bool dense = w.format == WeightFormat::kF32 && w.row_stride == kv_lora * 4;
  auto rows_of = [&](int64_t r0, int64_t rows, FloatVector& panel) -> const float* {
    if (dense) return reinterpret_cast<const float*>(w.data + r0 * w.row_stride);
    panel.resize(static_cast<size_t>(rows * kv_lora));
    cpu::DequantizeRows(w, r0, r0 + rows, panel.data());
    return panel.data();
  };
  // Absorb W_UK into the queries: q_cat[token, head] = [W_UK_h^T q_nope | q_pe]. One parallel
  // region over heads; the per-head products inside it run single-threaded.
  FloatVector q_cat(static_cast<size_t>(b * heads * dim));
  FloatVector o_lat(static_cast<size_t>(b * heads * kv_lora));
#pragma omp parallel
  {
    FloatVector q_nope(static_cast<size_t>(b * nope)), panel;
#pragma omp for schedule(static)
    for (int64_t hd = 0; hd < heads; ++hd) {
      for (int64_t i = 0; i < b; ++i) {
        const float* qi = q + (i * heads + hd) * qk;
        std::memcpy(q_nope.data() + i * nope, qi, static_cast<size_t>(nope) * sizeof(float));
        std::memcpy(q_cat.data() + (i * heads + hd) * dim + kv_lora, qi + nope,
                    static_cast<size_t>(rope) * sizeof(float));
      }
      // [b, nope] x W_UK_h [nope, kv_lora] -> rows of q_cat (stride heads * dim).
      cpu::MatMulNN(b, kv_lora, nope, q_nope.data(), nope, rows_of(hd * kvh, nope, panel), kv_lora,
                    q_cat.data() + hd * dim, heads * dim);
    }
  }
  // Attention over the latent cache: one token's context split over the threads in ranges of at
  // least kMinPositionsPerThread (one thread for short ones); several tokens in parallel, each
  // kernel call single-threaded.
  constexpr int64_t kMinPositionsPerThread = 128;
  auto attend = [&](int64_t i, int parts) {
    cpu::MlaDecodeAttention(q_cat.data() + i * heads * dim, heads, kv_lora, rope, cache,
                            block_tables + i * s.table_width, s.block_size, context[i], s.scale,
                            o_lat.data() + i * heads * kv_lora, parts);
  };
  if (b == 1) {
    attend(0, static_cast<int>(
                  std::min<int64_t>(cpu::NumThreads(), context[0] / kMinPositionsPerThread)));
  } else {
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < b; ++i) attend(i, 1);
  }
  // out_h = W_UV_h o_lat_h: [b, kv_lora] x W_UV_h^T -> [b, v], rows of out (stride heads * v).
#pragma omp parallel
  {
    FloatVector panel;
#pragma omp for schedule(static)
    for (int64_t hd = 0; hd < heads; ++hd) {
      cpu::MatMulNT(b, v_dim, kv_lora, o_lat.data() + hd * kv_lora, heads * kv_lora,
                    rows_of(hd * kvh + nope, v_dim, panel), kv_lora, out + hd * v_dim,
                    heads * v_dim);
    }
  }
}

void CpuOps::GqaDecode(const GqaDecodeShape& s, const float* q, int64_t ldq, int64_t b,
                       const float* cache, const int32_t* block_tables, const int32_t* context,
                       float* out) {
  for (int64_t i = 0; i < b; ++i) {
    cpu::GqaDecodeAttention(q + i * ldq, s.heads, s.kv_heads, s.head_dim, cache,
                            block_tables + i * s.table_width, s.block_size, context[i], s.scale,
                            out + i * ldq, s.window, s.chunk);
  }
}

void CpuOps::RouteTokens(const ModelConfig& config, const float* logits, const float* bias,
                         int64_t n, int32_t* ids, float* weights) {
  moe::RouteTokens(config, logits, bias, n, ids, weights);
}

void CpuOps::Sample(const float* logits, int64_t rows, int64_t vocab,
                    const std::vector<SampleRequest>& requests, int32_t* out) {
  for (int64_t i = 0; i < rows; ++i) {
    out[i] = SampleToken(logits + i * vocab, vocab, requests[i].spec, requests[i].index);
  }
}

void CpuOps::CountChoices(const int32_t* ids, int64_t n, int64_t* counts) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] >= 0) ++counts[ids[i]];
  }
}

void CpuOps::RoutedExperts(const ExpertSet& set, const float* x, int64_t rows, const int32_t* local,
                           const float* weight, int64_t k, Activation act, bool weight_on_input,
                           float* y) {
  const std::vector<Expert>& experts = set.experts;
  if (experts.empty() || rows == 0) return;
  const RowsPerExpert grouped = GroupRowsByExpert(local, weight, rows, k, experts.size());
  size_t most = 0, busy = 0;
  for (const std::vector<int32_t>& r : grouped.rows) {
    most = std::max(most, r.size());
    busy += r.empty() ? 0 : 1;
  }
  if (most > static_cast<size_t>(cpu::kFusedMaxRows) ||
      busy >= 2 * static_cast<size_t>(cpu::NumThreads())) {
    // Many rows, or enough active experts to keep every thread busy on whole experts:
    // ForEachExpert's schedule.
    RoutedExpertsByExpert(set, x, rows, grouped, act, weight_on_input, y);
    return;
  }
  // Few active experts with few rows each (decode on many cores): the experts one after another
  // inside one parallel region, each product split over all threads, instead of a parallel
  // region per product (three per expert).
  const int64_t h = experts.front().down->rows(), inter = experts.front().gate->rows();
  struct Active {
    const Expert* expert;
    const std::vector<int32_t>* rows;
    const std::vector<float>* weights;
    FloatVector x, gate_up, a, out;
  };
  std::vector<Active> active;
  for (size_t e = 0; e < experts.size(); ++e) {
    const std::vector<int32_t>& r = grouped.rows[e];
    if (r.empty()) continue;
    const auto n = static_cast<int64_t>(r.size());
    Active w{&experts[e],
             &r,
             &grouped.weights[e],
             FloatVector(static_cast<size_t>(n * h)),
             FloatVector(static_cast<size_t>(n * 2 * inter)),
             FloatVector(static_cast<size_t>(n * inter)),
             FloatVector(static_cast<size_t>(n * h))};
    GatherRows(x, r.data(), n, h, w.x.data());
    if (weight_on_input) ScaleRows(w.x.data(), grouped.weights[e].data(), n, h);
    active.push_back(std::move(w));
  }
  std::fill(y, y + rows * h, 0.0f);
#pragma omp parallel
  {
    const int t = omp_get_thread_num(), threads = omp_get_num_threads();
    const cpu::RowRange gu = cpu::FusedRowsOfThread(inter, t, threads);
    const cpu::RowRange out = cpu::FusedRowsOfThread(h, t, threads);
    for (Active& w : active) {  // gate and up: this thread's rows of each
      const auto n = static_cast<int64_t>(w.rows->size());
      cpu::MatMulNT(n, w.x.data(), h, w.expert->gate->host.Rows(gu.begin, gu.end),
                    w.gate_up.data() + gu.begin, 2 * inter);
      cpu::MatMulNT(n, w.x.data(), h, w.expert->up->host.Rows(gu.begin, gu.end),
                    w.gate_up.data() + inter + gu.begin, 2 * inter);
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (size_t i = 0; i < active.size(); ++i) {
      Active& w = active[i];
      GatedActivation(w.gate_up.data(), static_cast<int64_t>(w.rows->size()), inter, act,
                      w.a.data());
    }
    for (Active& w : active) {  // down: this thread's output columns, added into y's
      const auto n = static_cast<int64_t>(w.rows->size());
      cpu::MatMulNT(n, w.a.data(), inter, w.expert->down->host.Rows(out.begin, out.end),
                    w.out.data() + out.begin, h);
      for (int64_t i = 0; i < n; ++i) {
        const float s = weight_on_input ? 1.0f : (*w.weights)[static_cast<size_t>(i)];
        float* dst = y + static_cast<int64_t>((*w.rows)[static_cast<size_t>(i)]) * h;
        const float* src = w.out.data() + i * h;
        for (int64_t c = out.begin; c < out.end; ++c) dst[c] += s * src[c];
      }
    }
  }
}

void CpuOps::ForEachExpert(int64_t count, const std::vector<bool>& active, float* y, int64_t rows,
                           int64_t dim, const std::function<void(int64_t, float*)>& work) {
  std::fill(y, y + rows * dim, 0.0f);
  int64_t busy = 0;
  for (int64_t e = 0; e < count; ++e) busy += active[static_cast<size_t>(e)] ? 1 : 0;
  const int threads = cpu::NumThreads();
  if (busy < 2 * threads) {
    // Few active experts: one after another, each product using all threads.
    for (int64_t e = 0; e < count; ++e) {
      if (active[static_cast<size_t>(e)]) work(e, y);
    }
    return;
  }
  // Many active experts: experts in parallel, each product single-threaded; each thread
  // accumulates privately, then the partial outputs are summed.
  std::vector<FloatVector> partial(static_cast<size_t>(threads));
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    partial[t].assign(static_cast<size_t>(rows * dim), 0.0f);
#pragma omp for schedule(dynamic)
    for (int64_t e = 0; e < count; ++e) {
      if (active[static_cast<size_t>(e)]) work(e, partial[t].data());
    }
  }
  for (const FloatVector& p : partial) cpu::Add(y, p.data(), rows * dim);
}

}  // namespace moe
