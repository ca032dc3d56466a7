// Products of bf16 and fp8 weights with activations rounded to bf16 (`--activations bf16`, decode
// and prefill alike): each row of x is rounded to bf16 (to nearest even) once per product, and
// the weights meet it in AVX-512-BF16 dot products (`vdpbf16ps`, 32 multiply-adds an instruction,
// float32 sums). bf16 weights are used as they are stored; fp8 e4m3 weights become bf16 with two
// integer operations (the same 2^-120 shift as the float32 decode, folded back into the block
// scales). Faster than the float32 path, which widens every weight to float32, at the cost of
// rounding x (docs/performance.md states the error). The dot products treat subnormal inputs as
// zero, so fp8's subnormal codes (|w| < 2^-6 of the block scale) count as zero here.
//
// Highway 1.0.3 (Debian 12's) has no bf16 dot product, so this file uses the intrinsics of the one
// ISA extension it needs, compiled for it alone and called only where the CPU reports it.
#pragma once

#include <cstdint>
#include <vector>

#include "common/weight_matrix.h"

namespace moe::cpu {

// Whether this CPU has the bf16 dot products (AVX-512 F/BW/VL and BF16).
bool HasBf16DotProducts();

// Whether Bf16Product serves w: bf16 or fp8 blocks, on a CPU that has the products.
bool Bf16Serves(const WeightMatrix& w);

// Rows of x rounded for Bf16Product, each times `factor` first (a power of two: fp8's 2^64),
// `stride` bf16 values apart (k rounded up to 32, zero beyond k).
struct Bf16Rows {
  int64_t m = 0, k = 0, stride = 0;
  float factor = 1.0f;
  std::vector<uint16_t> x;
};
void RoundRowsBf16(int64_t m, const float* x, int64_t ldx, int64_t k, float factor, Bf16Rows* out);

// The factor x is rounded with for w (fp8 needs its rows times 2^64, see the .cc).
float Bf16Factor(const WeightMatrix& w);

// y[i * ldy + j] for output features j in [j0, j1) and all rows of x; Bf16Serves(w), x.k ==
// w.cols, x.factor == Bf16Factor(w), x.m >= 1. Any number of rows: the dot products are about twice
// float32's multiply-add rate, so this beats decoding to float32 for BLAS in prefill too.
void Bf16Product(const Bf16Rows& x, const WeightMatrix& w, int64_t j0, int64_t j1, float* y,
                 int64_t ldy);

}  // namespace moe::cpu
