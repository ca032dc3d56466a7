#include "kernels/ops.h"

namespace moe {

const char* DeviceName(Device device) { return device == Device::kCuda ? "cuda" : "cpu"; }

DeviceArray<float> GatherRows(Ops& ops, const float* x, const std::vector<int64_t>& rows,
                              int64_t dim) {
  const auto n = static_cast<int64_t>(rows.size());
  DeviceArray<int32_t> index = ops.Place(std::vector<int32_t>(rows.begin(), rows.end()));
  DeviceArray<float> out = ops.Allocate(n * dim);
  ops.GatherRows(x, index.data(), n, dim, out.data());
  return out;
}

Tensor ToHost(Ops& ops, const DeviceArray<float>& a, std::vector<int64_t> shape) {
  Tensor t = Tensor::Uninitialized(std::move(shape));
  ops.CopyToHost(a.data(), t.bytes(), t.data());
  return t;
}

}  // namespace moe
