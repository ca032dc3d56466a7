// The quantizers of the compact formats (the readers are in checkpoint.cc and the kernels): what
// moe-make-model writes and what --weights-dtype converts to at load.
#pragma once

#include <cstdint>
#include <vector>

namespace moe {

// Quantizes a [rows, cols] weight to e4m3 in br x bc blocks; scale_inv per block is amax / 448
// (1 for an all-zero block), so that weight = fp8 * scale_inv (DeepSeek-V3's layout).
void QuantizeFp8(const float* w, int64_t rows, int64_t cols, int64_t br, int64_t bc,
                 std::vector<uint8_t>* q, std::vector<float>* scale_inv);

// Quantizes a [rows, cols] weight to symmetric int4 in groups of `group` columns, packed as
// compressed-tensors does: scale = bf16(amax / 7.5), q = clamp(round(w / scale), -8, 7), stored
// q + 8, eight per int32 with column 8j + i in bits 4i..4i+3.
void QuantizeInt4(const float* w, int64_t rows, int64_t cols, int64_t group,
                  std::vector<int32_t>* packed, std::vector<uint16_t>* scales);

}  // namespace moe
