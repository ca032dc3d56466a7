// Products with few rows — a decode step's tokens, or the handful of tokens routed to one expert:
// y[m, n] = x[m, k] · w[n, k]^T + beta * y for 2 <= m <= kSkinnyMaxRows. Such a product is bound
// by reading w; a BLAS GEMM packs w first (one more pass over it) and gets about half the memory
// bandwidth here, so this kernel streams each weight row once, a few rows at a time, against all m
// rows of x kept in L1. Threads split n (one thread when called inside a parallel region).
#pragma once

#include <cstdint>

namespace moe::cpu {

inline constexpr int64_t kSkinnyMaxRows = 8;

void SkinnyMatMulNT(int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx, const float* w,
                    int64_t ldw, float* y, int64_t ldy, float beta);

}  // namespace moe::cpu
