#include "common/tensor.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace moe {

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

Tensor::Tensor(std::vector<int64_t> shape)
    : shape_(std::move(shape)), data_(static_cast<size_t>(NumElements(shape_)), 0.0f) {}

Tensor Tensor::Uninitialized(std::vector<int64_t> shape) {
  FloatVector data(static_cast<size_t>(NumElements(shape)));
  return Tensor(std::move(shape), std::move(data));
}

Tensor::Tensor(std::vector<int64_t> shape, FloatVector data)
    : shape_(std::move(shape)), data_(std::move(data)) {
  MOE_CHECK(NumElements(shape_) == static_cast<int64_t>(data_.size()));
}

std::string Tensor::ShapeString() const { return moe::ShapeString(shape_); }

Tensor GatherRows(const Tensor& x, const std::vector<int64_t>& rows) {
  const int64_t cols = x.dim(1);
  Tensor out = Tensor::Uninitialized({static_cast<int64_t>(rows.size()), cols});
  for (size_t i = 0; i < rows.size(); ++i) {
    std::memcpy(out.row(static_cast<int64_t>(i)), x.row(rows[i]),
                static_cast<size_t>(cols) * sizeof(float));
  }
  return out;
}

}  // namespace moe
