// The engine's op set on device memory — the CUDA twin of kernels/cpu/ops.h, attention.h and
// weight_matmul.h. Activations are float32. Weights stay in their checkpoint's format on the
// device (bf16, fp8 e4m3 with 128x128 block scales, int4 groups; f32/f16 are rounded to bf16):
// bf16 products go through cuBLAS (bf16 operands, float32 accumulation), fp8 and int4 ones
// through kernels that dequantize each weight in registers and multiply by float32 activations.
// Every launcher enqueues on `stream` and returns at once; none allocates or synchronises, so a
// sequence of them can be captured in a CUDA graph.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "common/weight_matrix.h"
#include "kernels/cpu/sampler.h"

namespace moe {
struct ModelConfig;
}

namespace moe::cuda {

using bf16 = __nv_bfloat16;

// ---- elementwise ------------------------------------------------------------------------------
void F32ToBf16(const float* x, bf16* y, int64_t n, cudaStream_t stream);
void Bf16ToF32(const bf16* x, float* y, int64_t n, cudaStream_t stream);
// y [rows, cols] (dense) = x's rows of `cols` floats, `ldx` apart, rounded to bf16.
void F32ToBf16Rows(const float* x, int64_t rows, int64_t cols, int64_t ldx, bf16* y,
                   cudaStream_t stream);
void Add(float* y, const float* x, int64_t n, cudaStream_t stream);  // y += x
void Fill(float* y, int64_t n, float value, cudaStream_t stream);
void Scale(float* y, float a, int64_t n, cudaStream_t stream);  // y *= a
// x[i] *= scales[i] for i < n (rows of dim floats).
void ScaleRows(float* x, const float* scales, int64_t n, int64_t dim, cudaStream_t stream);
// y[index[i]] += scales[i] * x[i] for i < n (rows of dim floats; distinct indices; null scales:
// 1).
void AddScaledRows(const float* x, const float* scales, const int32_t* index, int64_t n,
                   int64_t dim, float* y, cudaStream_t stream);
// y[r] += bias for `rows` rows of `dim` floats, `ld` apart.
void AddToRows(float* y, int64_t rows, int64_t dim, int64_t ld, const float* bias,
               cudaStream_t stream);
void SoftCap(float* x, int64_t n, float cap, cudaStream_t stream);  // x = tanh(x / cap) * cap
// y = x / sqrt(mean(x^2) + eps) * weight per row of `dim` (rows `ld` apart; null weight: 1).
void RmsNorm(const float* x, int64_t rows, int64_t dim, int64_t ld, const float* weight, float eps,
             float* y, cudaStream_t stream);
// out[r] = sum of squares of row r; NormalizeRows scales row r by
// weight / sqrt(sumsq[r] / replication / width + eps) (the twins of CpuOps').
void RowSumSquares(const float* x, int64_t rows, int64_t dim, int64_t ld, float* out,
                   cudaStream_t stream);
void NormalizeRows(float* x, int64_t rows, int64_t dim, int64_t ld, const float* sumsq,
                   float replication, float width, float eps, const float* weight,
                   cudaStream_t stream);
// out[r, i] = silu(gate_up[r, i]) * gate_up[r, inter + i]; GeluTanhAndMul with Gemma's
// gelu_tanh.
void SiluAndMul(const float* gate_up, int64_t rows, int64_t inter, float* out, cudaStream_t stream);
void GeluTanhAndMul(const float* gate_up, int64_t rows, int64_t inter, float* out,
                    cudaStream_t stream);
// Interleaved RoPE on `heads` vectors of `dim` per row: vector h of row r starts at
// x + r * row_stride + h * head_stride; cos/sin are [rows, dim / 2].
void RopeInterleaved(float* x, int64_t rows, int64_t heads, int64_t row_stride, int64_t head_stride,
                     int64_t dim, const float* cos, const float* sin, cudaStream_t stream);
// The same, or with `interleaved` false rotating the pairs (x[i], x[i + dim / 2]) (the GQA
// families' rotate-half layout).
void Rope(float* x, int64_t rows, int64_t heads, int64_t row_stride, int64_t head_stride,
          int64_t dim, const float* cos, const float* sin, bool interleaved, cudaStream_t stream);
// out[i] = row tokens[i] - first_row of the table (bf16 rows of `dim`, table_rows of them) as
// float32; zero for a token outside the table.
void EmbeddingLookup(const bf16* table, int64_t first_row, int64_t table_rows,
                     const int32_t* tokens, int64_t n, int64_t dim, float* out,
                     cudaStream_t stream);

// out[i] = x[rows[i]] for i < n (rows of dim floats; a negative row gives zeros).
void GatherRows(const float* x, const int32_t* rows, int64_t n, int64_t dim, float* out,
                cudaStream_t stream);
// out[rows[i]] = x[i] for i < n (rows of dim floats) — e.g. new latent KV rows into cache slots.
void ScatterRows(const float* x, const int32_t* rows, int64_t n, int64_t dim, float* out,
                 cudaStream_t stream);

// ---- GEMM (row-major shapes) ------------------------------------------------------------------
// A weight [rows, cols] in device memory in its checkpoint format: the device twin of
// WeightMatrix (kBF16, kF8Block, kInt4Group), plain data passed to kernels by value.
//   kBF16       rows `row_stride` bytes apart;
//   kF8Block    e4m3 bytes times block_scales[((r + row0) / block_rows) * scale_stride +
//               (c + col0) / block_cols] (row0, col0: the window's place in its first block);
//   kInt4Group  eight nibbles per little-endian int32 (value i in bits 4i..4i+3, stored q + 8)
//               times the bf16 group_scales[r * scale_stride + c / group_size].
struct WeightView {
  WeightFormat format = WeightFormat::kBF16;
  int64_t rows = 0, cols = 0;
  const uint8_t* data = nullptr;
  int64_t row_stride = 0;
  const float* block_scales = nullptr;
  int64_t block_rows = 128, block_cols = 128, row0 = 0, col0 = 0;
  const uint16_t* group_scales = nullptr;
  int64_t group_size = 32;
  int64_t scale_stride = 0;
};
// y[m, w.rows] = x[m, w.cols] · W^T for a compact W (fp8 or int4; bf16 works too), float32
// accumulation; rows of x `ldx` apart, of y `ldy`. Up to 8 rows, each weight is read once; more
// rows go through a tiled product.
void WeightLinear(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y,
                  int64_t ldy, cudaStream_t stream);
// Grouped product over experts with the row ranges on the device (graph-capturable): for each
// expert e, y[offsets[e]..offsets[e+1]) = x[same rows, k] · W_e^T, W_e = w[e] (device memory, all
// of `format` and [n, k]); rows of x k apart, of y `ldy`.
void GroupedWeightLinear(const float* x, const int32_t* offsets, int64_t experts,
                         WeightFormat format, const WeightView* w, int64_t n, int64_t k, float* y,
                         int64_t ldy, cudaStream_t stream);
// y = x · W^T for any WeightView: bf16 through cuBLAS (x rounded to bf16 into `x_bf16`, m * cols
// elements), the compact formats through WeightLinear. ldx, ldy 0: dense rows.
absl::Status Linear(cublasHandle_t blas, const float* x, int64_t m, const WeightView& w, float* y,
                    bf16* x_bf16, cudaStream_t stream, int64_t ldx = 0, int64_t ldy = 0);

// y[m, n] = x[m, k] · w[n, k]^T, x's rows `ldx` apart (0: k): x is converted to bf16 into
// `x_bf16` (m * k elements), the product accumulates in float32.
absl::Status Linear(cublasHandle_t blas, const float* x, int64_t m, int64_t k, const bf16* w,
                    int64_t n, float* y, bf16* x_bf16, cudaStream_t stream, int64_t ldx = 0);
// The same product in float32 throughout (the router gate, whose top-k choice is sensitive);
// rows of x, w and y `ldx`, `ldw`, `ldy` apart (0: dense).
absl::Status LinearF32(cublasHandle_t blas, const float* x, int64_t m, int64_t k, const float* w,
                       int64_t n, float* y, cudaStream_t stream, int64_t ldx = 0, int64_t ldw = 0,
                       int64_t ldy = 0);
// A matrix operand of a batched product: matrix i starts at data + i * stride, rows ld apart.
struct Strided {
  const bf16* data;
  int64_t ld, stride;
};
// For i < batch: c_i[m, n] = a_i[m, k] · b_i, where b_i is [k, n], or [n, k] used transposed
// when `transpose_b`. bf16 operands, float32 result (rows of c `ldc` apart, matrices
// `stride_c`).
absl::Status BatchedMatMul(cublasHandle_t blas, int64_t batch, int64_t m, int64_t n, int64_t k,
                           Strided a, Strided b, bool transpose_b, float* c, int64_t ldc,
                           int64_t stride_c, cudaStream_t stream);

// ---- attention --------------------------------------------------------------------------------
// Absorbed MLA decode over the paged latent cache, one token per sequence:
//   q [b, heads, kv_lora + rope]; cache: the layer's block pool (rows of kv_lora + rope floats,
//   block_size rows per block); block_tables [b, max_blocks]; ctx_lens [b];
//   out [b, heads, kv_lora] = sum_t softmax_t(scale * q·row_t) * c_kv_t.
void MlaDecodeAttention(const float* q, int64_t b, int64_t heads, int64_t kv_lora, int64_t rope,
                        const float* cache, const int32_t* block_tables, int64_t max_blocks,
                        const int32_t* ctx_lens, int64_t block_size, float scale, float* out,
                        cudaStream_t stream);
// Causal attention of one chunk over expanded K/V: q [q_len, heads, dqk], k [ctx, heads, dqk],
// v [ctx, heads, dv], out [q_len, heads, dv]; query i at position start + i. dqk, dv <= 256.
void CausalAttention(const float* q, const float* k, const float* v, int64_t q_len, int64_t ctx,
                     int64_t heads, int64_t dqk, int64_t dv, int64_t start, float scale, float* out,
                     cudaStream_t stream);
// Prefill's K/V from the expanded latent: kv [ctx, heads, nope + v_dim] (kv_b_proj of c_kv),
// latent [ctx, kv_lora + rope] (the cache rows) ->
//   k [ctx, heads, nope + rope] = [kv's nope part | the row's shared k_pe], v [ctx, heads, v_dim].
void SplitMlaKv(const float* kv, const float* latent, int64_t ctx, int64_t heads, int64_t nope,
                int64_t v_dim, int64_t kv_lora, int64_t rope, float* k, float* v,
                cudaStream_t stream);

// ---- MoE --------------------------------------------------------------------------------------
struct RouterParams {
  int32_t experts = 0, top_k = 0, n_group = 1, topk_group = 1;
  bool softmax_scoring = false;  // else sigmoid
  bool group_top2_sum = true;    // noaux_tc (else the group's best score)
  bool grouped = false;          // group-limited selection
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.0f;
};
// The router a config describes (scoring_func, topk_method, groups, normalisation, scaling).
RouterParams RouterParamsFor(const ModelConfig& config);
// The twin of RouteTokens (worker/router.h): logits [n, experts] -> ids, weights [n, top_k],
// ids by descending choice score, ties to the lower id. experts <= 1024.
void RouteTokens(const float* logits, const float* bias, int64_t n, const RouterParams& p,
                 int32_t* ids, float* weights, cudaStream_t stream);
// Sorts the n * k (token, slot) pairs by expert, keeping (token, slot) order within an expert:
// offsets [experts + 1], sorted_token [n * k] (the row's source token), sorted_slot (its slot),
// row_of [n * k] (the sorted row of pair token * k + slot). Pairs whose id is -1 (an expert of
// another rank) get no row: row_of -1, and sorted_token -1 past the offsets[experts] sorted rows.
// Deterministic, no atomics.
void PermuteByExpert(const int32_t* ids, int64_t n, int64_t k, int64_t experts, int32_t* offsets,
                     int32_t* sorted_token, int32_t* row_of, cudaStream_t stream);
// out[t] (+)= sum_j weights[t, j] * y[row_of[t * k + j]] — each token's rows, in slot order (-1
// rows skipped).
void CombineRows(const float* y, const int32_t* row_of, const float* weights, int64_t n, int64_t k,
                 int64_t dim, float* out, bool accumulate, cudaStream_t stream);
// The MoE dispatcher's row moves on the device (parallel/cuda_row_memory.h):
// out[t] = sum of y[rows[begin[t]]], ..., y[rows[begin[t + 1] - 1]] in that order (zero when
// none), rows of dim floats;
void SumRowRanges(const float* y, const int64_t* rows, const int64_t* begin, int64_t n, int64_t dim,
                  float* out, cudaStream_t stream);
// n routing rows [k int32 ids | k float weights (bits)] -> ids [n, k], weights [n, k].
void SplitRoutingRows(const int32_t* meta, int64_t n, int64_t k, int32_t* ids, float* weights,
                      cudaStream_t stream);
// counts[ids[i]] += 1 for i < n with ids[i] >= 0 (the twin of CpuOps::CountChoices).
void CountChoices(const int32_t* ids, int64_t n, int64_t* counts, cudaStream_t stream);

// ---- sampling ---------------------------------------------------------------------------------
// The twin of SampleToken (kernels/cpu/sampler.h): greedy, temperature, top-k, top-p, seeded
// draw; `requests` (device memory) holds one SampleRequest per row.
void Sample(const float* logits, int64_t rows, int64_t vocab, const SampleRequest* requests,
            int32_t* out, cudaStream_t stream);

// Devices visible to this process (0 without a GPU or driver).
int DeviceCount();

}  // namespace moe::cuda
