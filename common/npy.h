// Reading and writing NumPy .npy files of float32 (little-endian, C order) — the format of the
// golden logits and of `moe-generate --logits-out`.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "common/tensor.h"

namespace moe {

absl::Status WriteNpy(const std::string& path, const Tensor& t);
absl::StatusOr<Tensor> ReadNpy(const std::string& path);

}  // namespace moe
