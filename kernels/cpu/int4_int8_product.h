// int4 products with 8-bit activations (`--activations int8`, decode and prefill): each 32-column
// group of a row of x is rounded to int8 with a scale of its own (max |x| / 127, as llama.cpp's
// Q8_0), and the group's product with the weights' nibbles is an integer dot product (AVX-512-VNNI
// `vpdpbusd`, 64 multiply-adds an instruction), times the two scales. Faster than the float32 path,
// which decodes each weight to float, at the cost of rounding x (docs/performance.md states the
// error).
//
// Highway 1.0.3 (Debian 12's) has no 8-bit dot product, so this file uses the intrinsics of the one
// ISA extension it needs, compiled for it alone and called only where the CPU reports it.
#pragma once

#include <cstdint>
#include <vector>

#include "common/weight_matrix.h"

namespace moe::cpu {

// Whether this CPU has the 8-bit dot products (AVX-512 F/BW/VL and VNNI).
bool HasInt8DotProducts();

// Whether Int4Int8Product serves w: int4 with 32-column groups, on a CPU that has the products.
bool Int4Int8Serves(const WeightMatrix& w);

// Rows of x rounded for Int4Int8Product (QuantizeRowsInt8 needs HasInt8DotProducts()): per row,
// per pair of 32-column groups, 64 int8 values
// (the two groups' even columns, then their odd ones, matching the nibbles of the packed words),
// a 16-float scale vector laid out like the dot products' lanes, and per group 8 x scale x sum of
// its int8 values (the stored nibbles are q + 8).
struct Int8Rows {
  int64_t m = 0, k = 0;
  std::vector<int8_t> q;
  std::vector<float> lane_scales;
  std::vector<float> offsets;
};
void QuantizeRowsInt8(int64_t m, const float* x, int64_t ldx, int64_t k, Int8Rows* out);

// y[i * ldy + j] for output features j in [j0, j1) and all rows of x; Int4Int8Serves(w), x.k ==
// w.cols, x.m >= 1. Any number of rows (one pass over a weight row per 8 rows of x): the integer
// dot products outrun decoding to float32 for BLAS in prefill too.
void Int4Int8Product(const Int8Rows& x, const WeightMatrix& w, int64_t j0, int64_t j1, float* y,
                     int64_t ldy);

}  // namespace moe::cpu
