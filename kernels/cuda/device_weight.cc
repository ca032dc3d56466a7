#include "kernels/cuda/device_weight.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "kernels/cpu/weight_matmul.h"

namespace moe::cuda {

absl::StatusOr<DeviceWeight> DeviceWeight::Upload(const WeightMatrix& w, bool as_bf16) {
  DeviceWeight d;
  WeightView& v = d.view_;
  v.rows = w.rows;
  v.cols = w.cols;
  if (w.empty()) return d;
  const size_t rows = static_cast<size_t>(w.rows);
  const bool native =
      !as_bf16 && (w.format == WeightFormat::kF8Block || w.format == WeightFormat::kInt4Group);
  std::vector<uint8_t> bytes;
  if (!native) {  // bf16, dense rows
    v.format = WeightFormat::kBF16;
    v.row_stride = w.cols * 2;
    std::vector<float> row(static_cast<size_t>(w.cols));
    bytes.resize(rows * static_cast<size_t>(v.row_stride));
    for (int64_t r = 0; r < w.rows; ++r) {
      cpu::DequantizeRows(w, r, r + 1, row.data());
      for (int64_t c = 0; c < w.cols; ++c) {
        const uint16_t b = F32ToBF16(row[c]);
        std::memcpy(&bytes[(r * w.cols + c) * 2], &b, 2);
      }
    }
  } else if (w.format == WeightFormat::kF8Block) {
    v.format = WeightFormat::kF8Block;
    v.row_stride = w.cols;
    bytes.resize(rows * static_cast<size_t>(w.cols));
    for (int64_t r = 0; r < w.rows; ++r) {
      std::memcpy(&bytes[r * w.cols], w.data + r * w.row_stride, static_cast<size_t>(w.cols));
    }
    // The scale blocks the window touches, and the window's place in the first of them.
    const int64_t br0 = w.row0 / w.block_rows, br1 = (w.row0 + w.rows - 1) / w.block_rows + 1;
    const int64_t bc0 = w.col0 / w.block_cols, bc1 = (w.col0 + w.cols - 1) / w.block_cols + 1;
    std::vector<float> scales;
    for (int64_t i = br0; i < br1; ++i) {
      for (int64_t j = bc0; j < bc1; ++j) scales.push_back(w.block_scales[i * w.scale_stride + j]);
    }
    v.block_rows = w.block_rows;
    v.block_cols = w.block_cols;
    v.row0 = w.row0 - br0 * w.block_rows;
    v.col0 = w.col0 - bc0 * w.block_cols;
    v.scale_stride = bc1 - bc0;
    MOE_RETURN_IF_ERROR(d.block_scales_.Upload(scales));
    v.block_scales = d.block_scales_.data();
  } else {
    if (w.cols % w.group_size != 0 || w.group_size % 8 != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("int4 weight of ", w.cols, " columns in groups of ", w.group_size));
    }
    v.format = WeightFormat::kInt4Group;
    v.row_stride = w.cols / 2;
    v.group_size = w.group_size;
    v.scale_stride = w.cols / w.group_size;
    bytes.resize(rows * static_cast<size_t>(v.row_stride));
    std::vector<uint16_t> scales(rows * static_cast<size_t>(v.scale_stride));
    for (int64_t r = 0; r < w.rows; ++r) {
      std::memcpy(&bytes[r * v.row_stride], w.data + r * w.row_stride,
                  static_cast<size_t>(v.row_stride));
      std::memcpy(&scales[r * v.scale_stride], w.group_scales + r * w.scale_stride,
                  static_cast<size_t>(v.scale_stride) * 2);
    }
    MOE_RETURN_IF_ERROR(d.group_scales_.Upload(scales));
    v.group_scales = d.group_scales_.data();
  }
  MOE_RETURN_IF_ERROR(d.data_.Upload(bytes));
  v.data = d.data_.data();
  return d;
}

const bf16* DeviceWeight::bf16_data() const {
  MOE_CHECK(view_.format == WeightFormat::kBF16);
  return reinterpret_cast<const bf16*>(view_.data);
}

size_t DeviceWeight::bytes() const {
  return data_.size() + block_scales_.size() * sizeof(float) +
         group_scales_.size() * sizeof(uint16_t);
}

}  // namespace moe::cuda
