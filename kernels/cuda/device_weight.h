// DeviceWeight: the device copy of one WeightMatrix, owning its memory. fp8 blocks and int4
// groups are copied as they are (the window's bytes and the scales covering it), so a weight takes
// its checkpoint bytes on the GPU too; bf16 as it is; f32 and f16 rounded to bf16.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "common/weight_matrix.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/ops.h"

namespace moe::cuda {

class DeviceWeight {
 public:
  DeviceWeight() = default;
  // `as_bf16`: every format rounded to bf16 (for products only cuBLAS does, e.g. MLA's absorbed
  // kv_b_proj).
  static absl::StatusOr<DeviceWeight> Upload(const WeightMatrix& w, bool as_bf16 = false);

  const WeightView& view() const { return view_; }
  WeightFormat format() const { return view_.format; }
  bool empty() const { return view_.rows == 0 || view_.cols == 0; }
  const bf16* bf16_data() const;  // kBF16 only
  size_t bytes() const;           // device bytes of data and scales

 private:
  WeightView view_;
  DeviceBuffer<uint8_t> data_;
  DeviceBuffer<float> block_scales_;
  DeviceBuffer<uint16_t> group_scales_;
};

}  // namespace moe::cuda
