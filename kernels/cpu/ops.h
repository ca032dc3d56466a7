// The CPU op set of the engine: float32 math on host memory, multithreaded over the machine's
// cores (OpenMP; GEMMs through OpenBLAS). Every CUDA kernel is tested against these.
#pragma once

#include <cstdint>

namespace moe::cpu {

// Threads used by the ops (OpenMP and BLAS share one pool).
void SetNumThreads(int n);
int NumThreads();

// y[m, n] = x[m, k] · w[n, k]^T + beta * y. Leading dimensions in elements. The linear layer's
// product: weights are stored [out_features, in_features] as in the checkpoints.
void MatMulNT(int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx, const float* w,
              int64_t ldw, float* y, int64_t ldy, float beta = 0.0f);
// y[m, n] = x[m, k] · w[k, n] + beta * y.
void MatMulNN(int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx, const float* w,
              int64_t ldw, float* y, int64_t ldy, float beta = 0.0f);

// y = x / sqrt(mean(x^2) + eps) * weight, per row of `dim` values (rows `ld` apart in x and y);
// a null weight scales by 1 (Llama 4's L2 QK-norm).
void RmsNorm(const float* x, int64_t rows, int64_t dim, int64_t ld, const float* weight, float eps,
             float* y);

// out[r, i] = silu(gate_up[r, i]) * gate_up[r, inter + i]  (gate and up side by side per row).
void SiluAndMul(const float* gate_up, int64_t rows, int64_t inter, float* out);
// The same with gelu_tanh(g) = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))) (Gemma).
void GeluTanhAndMul(const float* gate_up, int64_t rows, int64_t inter, float* out);

// In-place numerically stable softmax of n values.
void SoftmaxInPlace(float* x, int64_t n);

// Rotates adjacent pairs (x[2i], x[2i+1]) by the angle whose cos/sin are cos[i], sin[i] —
// DeepSeek's interleaved RoPE layout. `dim` is even.
void RopeInterleaved(float* x, int64_t dim, const float* cos, const float* sin);
// Rotates the pairs (x[i], x[i + dim/2]) by the angle of cos[i], sin[i] — the rotate-half layout
// of Llama, Qwen, Mistral and the other GQA families.
void RopeHalves(float* x, int64_t dim, const float* cos, const float* sin);

void Add(float* y, const float* x, int64_t n);  // y += x
void Scale(float* y, float a, int64_t n);       // y *= a
int64_t ArgMax(const float* x, int64_t n);      // first index of the largest value

}  // namespace moe::cpu
