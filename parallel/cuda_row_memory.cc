#include "parallel/cuda_row_memory.h"

#include <algorithm>

#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/ops.h"

namespace moe {

CudaRowMemory::CudaRowMemory(cudaStream_t stream) : stream_(stream) {}

absl::Status CudaRowMemory::Sync() {
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return cuda::CudaStatus(cudaGetLastError(), "MoE dispatch kernels");
}

absl::Status CudaRowMemory::Reserve(Buffer* b, size_t bytes) {
  if (bytes <= b->bytes) return absl::OkStatus();
  const size_t size = std::max(bytes, 2 * b->bytes);
  void* p = nullptr;
  MOE_CUDA_RETURN_IF_ERROR(cudaMalloc(&p, size));
  b->owner = std::shared_ptr<void>(p, [](void* q) { cudaFree(q); });
  b->data = p;
  b->bytes = size;
  return absl::OkStatus();
}

absl::Status CudaRowMemory::CopyToHost(const void* src, size_t bytes, void* host) {
  if (bytes == 0) return absl::OkStatus();
  MOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, stream_));
  return Sync();
}

absl::Status CudaRowMemory::CopyFromHost(const void* host, size_t bytes, void* dst) {
  if (bytes == 0) return absl::OkStatus();
  MOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, stream_));
  return Sync();
}

absl::Status CudaRowMemory::GatherRows(const float* src, const int32_t* index, int64_t n,
                                       int64_t dim, float* dst) {
  if (n == 0) return absl::OkStatus();
  const size_t bytes = static_cast<size_t>(n) * sizeof(int32_t);
  MOE_RETURN_IF_ERROR(Reserve(&index_, bytes));
  MOE_RETURN_IF_ERROR(CopyFromHost(index, bytes, index_.data));
  cuda::GatherRows(src, index_.ints(), n, dim, dst, stream_);
  return Sync();
}

absl::Status CudaRowMemory::SumRows(const float* src, const int64_t* rows, const int64_t* begin,
                                    int64_t n, int64_t dim, float* out) {
  if (n == 0) return absl::OkStatus();
  const size_t row_bytes = static_cast<size_t>(begin[n]) * sizeof(int64_t);
  const size_t begin_bytes = static_cast<size_t>(n + 1) * sizeof(int64_t);
  MOE_RETURN_IF_ERROR(Reserve(&rows_, std::max<size_t>(row_bytes, 8)));
  MOE_RETURN_IF_ERROR(Reserve(&begin_, begin_bytes));
  MOE_RETURN_IF_ERROR(CopyFromHost(rows, row_bytes, rows_.data));
  MOE_RETURN_IF_ERROR(CopyFromHost(begin, begin_bytes, begin_.data));
  cuda::SumRowRanges(src, static_cast<const int64_t*>(rows_.data),
                     static_cast<const int64_t*>(begin_.data), n, dim, out, stream_);
  return Sync();
}

absl::Status CudaRowMemory::SplitMeta(const int32_t* meta, int64_t n, int64_t k, int32_t* ids,
                                      float* weights) {
  cuda::SplitRoutingRows(meta, n, k, ids, weights, stream_);
  return Sync();
}

}  // namespace moe
