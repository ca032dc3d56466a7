#include "common/weight_matrix.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"

namespace moe {

absl::string_view WeightFormatName(WeightFormat f) {
  switch (f) {
    case WeightFormat::kF32:
      return "f32";
    case WeightFormat::kBF16:
      return "bf16";
    case WeightFormat::kF16:
      return "f16";
    case WeightFormat::kF8Block:
      return "fp8";
    case WeightFormat::kInt4Group:
      return "int4";
  }
  return "?";
}

absl::StatusOr<WeightsAtLoad> ParseWeightsAtLoad(absl::string_view name) {
  if (name == "stored") return WeightsAtLoad::kAsStored;
  if (name == "f32") return WeightsAtLoad::kF32;
  if (name == "fp8") return WeightsAtLoad::kFp8;
  return absl::InvalidArgumentError(absl::StrCat("unknown weights dtype \"", name,
                                                 "\" (stored, f32 or fp8)"));
}

absl::StatusOr<Activations> ParseActivations(absl::string_view name) {
  if (name == "f32") return Activations::kF32;
  if (name == "bf16") return Activations::kBf16;
  if (name == "int8") return Activations::kInt8;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown activations \"", name, "\" (f32, bf16 or int8)"));
}

WeightMatrix WeightMatrix::Rows(int64_t r0, int64_t r1) const {
  WeightMatrix w;
  w.format = format;
  w.rows = r1 - r0;
  w.cols = cols;
  w.data = data + r0 * row_stride;
  w.row_stride = row_stride;
  w.block_scales = block_scales;
  w.block_rows = block_rows;
  w.block_cols = block_cols;
  w.row0 = row0 + r0;
  w.col0 = col0;
  w.group_scales = group_scales == nullptr ? nullptr : group_scales + r0 * scale_stride;
  w.group_size = group_size;
  w.scale_stride = scale_stride;
  w.x_rounding = x_rounding;
  return w;
}

size_t WeightMatrix::bytes() const {
  const size_t n = static_cast<size_t>(rows * cols);
  switch (format) {
    case WeightFormat::kF32:
      return n * 4;
    case WeightFormat::kBF16:
    case WeightFormat::kF16:
      return n * 2;
    case WeightFormat::kF8Block: {
      const int64_t br = (row0 + rows + block_rows - 1) / block_rows - row0 / block_rows;
      const int64_t bc = (col0 + cols + block_cols - 1) / block_cols - col0 / block_cols;
      return n + static_cast<size_t>(br * bc) * 4;
    }
    case WeightFormat::kInt4Group:
      return n / 2 + static_cast<size_t>(rows * (cols / group_size)) * 2;
  }
  return 0;
}

WeightMatrix F32WeightMatrix(Tensor t) {
  auto owned = std::make_shared<Tensor>(std::move(t));
  WeightMatrix w;
  w.format = WeightFormat::kF32;
  w.rows = owned->dim(0);
  w.cols = owned->dim(1);
  w.data = reinterpret_cast<const uint8_t*>(owned->data());
  w.row_stride = w.cols * static_cast<int64_t>(sizeof(float));
  w.owner = std::move(owned);
  return w;
}

}  // namespace moe
