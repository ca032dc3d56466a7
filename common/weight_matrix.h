// WeightMatrix: a 2-D weight [rows, cols] (output features x input features) in the format the
// checkpoint stores it, in host memory — usually a view into the memory-mapped safetensors file,
// kept alive by `owner`. The CPU matmul kernels read it as it is and dequantize in registers.
//
// Formats (element (r, c) is stored element (r + row0, c + col0) of the checkpoint tensor; a rank's
// shard is a window of it, so shards are views too):
//   kF32, kBF16, kF16  plain elements, rows `row_stride` bytes apart.
//   kF8Block           float8 e4m3 elements times a float32 scale per block_rows x block_cols block
//                      of the stored tensor (DeepSeek-V3's `weight_scale_inv`, [ceil(R/br),
//                      ceil(C/bc)], `scale_stride` floats per row of blocks).
//   kInt4Group         compressed-tensors "pack-quantized": eight 4-bit values per little-endian
//                      int32, value i of a word in bits 4i..4i+3, stored as q + 8 (symmetric,
//                      q in [-8, 7]); times one bf16 scale per `group_size` columns of a row
//                      (`weight_scale`, [R, C / group_size], `scale_stride` bf16 per row).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/tensor.h"

namespace moe {

enum class WeightFormat { kF32, kBF16, kF16, kF8Block, kInt4Group };

absl::string_view WeightFormatName(WeightFormat f);  // "f32", "bf16", "f16", "fp8", "int4"

// What loading does with the weights (`--weights-dtype`):
//   kAsStored  use them in the checkpoint's format (the default);
//   kF32       convert every weight to float32 (the reference path; 4x fp8's memory);
//   kFp8       convert float weights of the projections (not the embeddings and lm_head) to fp8
//              e4m3 in 128x128 blocks, as DeepSeek ships them: for bf16/f32 checkpoints, speed
//              and memory for accuracy (measured in README.md). fp8 and int4 weights stay as they
//              are.
enum class WeightsAtLoad { kAsStored, kF32, kFp8 };
absl::StatusOr<WeightsAtLoad> ParseWeightsAtLoad(absl::string_view name);  // stored | f32 | fp8

// What the CPU products do with x (`--activations`), in decode and prefill:
//   kF32   keep it in float32 (the default; exact against HF transformers);
//   kBf16  for bf16 and fp8 weights (the projections and lm_head) on CPUs with AVX-512-BF16,
//          round x to bf16 and run bf16 dot products (kernels/cpu/bf16_product.h);
//   kInt8  as kBf16, and for int4 weights on CPUs with AVX-512-VNNI, round each 32 columns of a
//          row of x to int8 (scale max |x| / 127) and run integer dot products
//          (kernels/cpu/int4_int8_product.h) — what llama.cpp does with each weight type.
// The rounding modes are faster, at an error stated in docs/performance.md. Other weights and
// CPUs keep float32.
enum class Activations { kF32, kBf16, kInt8 };
absl::StatusOr<Activations> ParseActivations(absl::string_view name);  // f32 | bf16 | int8
// The --activations flag's help, shared by the binaries that take it.
inline constexpr char kActivationsFlagHelp[] =
    "CPU products: f32 (x stays float32, exact), bf16 (x rounded to bf16 against bf16 and fp8 "
    "weights, on CPUs with AVX-512-BF16) or int8 (as bf16, and x rounded to int8 per 32 "
    "columns against int4 weights, on CPUs with AVX-512-VNNI). The rounding modes are faster; "
    "their error is in docs/performance.md.";

struct WeightMatrix {
  WeightFormat format = WeightFormat::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* data = nullptr;  // element (0, 0)
  int64_t row_stride = 0;         // bytes between rows

  // kF8Block: float32 block scales of the stored tensor.
  const float* block_scales = nullptr;
  int64_t block_rows = 128, block_cols = 128;
  int64_t row0 = 0, col0 = 0;  // this window's origin in the stored tensor
  // kInt4Group: bf16 scales, already offset to this window's first row and group.
  const uint16_t* group_scales = nullptr;
  int64_t group_size = 32;
  // Elements between scale rows: floats of a block row (kF8Block), bf16 of a row (kInt4Group).
  int64_t scale_stride = 0;

  // How products with this matrix round x where the CPU has the dot products: kBf16 (bf16 and
  // fp8 weights; kernels/cpu/bf16_product.h) or kInt8 (int4 weights;
  // kernels/cpu/int4_int8_product.h). Set at load from the engine's Activations.
  Activations x_rounding = Activations::kF32;

  std::shared_ptr<const void> owner;  // keeps `data` and the scales alive

  bool empty() const { return rows == 0 || cols == 0; }
  // kF8Block: the scales of row r's column blocks, from the block holding this window's column 0;
  // and the columns of the window's first block (the window may start inside one).
  const float* BlockScalesOfRow(int64_t r) const {
    return block_scales + (r + row0) / block_rows * scale_stride + col0 / block_cols;
  }
  int64_t FirstBlockCols() const { return block_cols - col0 % block_cols; }
  // Rows [r0, r1) of this window, as a view that shares no ownership (valid while this lives).
  WeightMatrix Rows(int64_t r0, int64_t r1) const;
  // Bytes of data and scales this window reads.
  size_t bytes() const;
};

// A float32 WeightMatrix over the 2-D tensor `t` [rows, cols], which it owns.
WeightMatrix F32WeightMatrix(Tensor t);

}  // namespace moe
