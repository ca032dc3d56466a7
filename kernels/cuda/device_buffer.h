// Device memory owned by one object (cudaMalloc / cudaFree), with typed copies.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"

namespace moe::cuda {

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), n_(o.n_) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      data_ = std::exchange(o.data_, nullptr);
      n_ = o.n_;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  absl::Status Allocate(size_t n) {
    Reset();
    if (n == 0) return absl::OkStatus();
    MOE_CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&data_), n * sizeof(T)));
    n_ = n;
    return absl::OkStatus();
  }
  absl::Status Upload(const T* host, size_t n, cudaStream_t stream = nullptr) {
    if (n > n_) MOE_RETURN_IF_ERROR(Allocate(n));
    return CudaStatus(cudaMemcpyAsync(data_, host, n * sizeof(T), cudaMemcpyHostToDevice, stream),
                      "upload");
  }
  absl::Status Upload(const std::vector<T>& host, cudaStream_t stream = nullptr) {
    return Upload(host.data(), host.size(), stream);
  }
  absl::Status Download(T* host, size_t n, cudaStream_t stream = nullptr) const {
    return CudaStatus(cudaMemcpyAsync(host, data_, n * sizeof(T), cudaMemcpyDeviceToHost, stream),
                      "download");
  }
  void Reset() {
    if (data_ != nullptr) cudaFree(data_);
    data_ = nullptr;
    n_ = 0;
  }
  T* data() const { return data_; }
  size_t size() const { return n_; }

 private:
  T* data_ = nullptr;
  size_t n_ = 0;
};

}  // namespace moe::cuda
