// The MoE dispatcher's buffers in GPU memory (the RowMemory of the CUDA engine, used with the
// NCCL communicator): rows gathered and summed by kernels, host copies through cudaMemcpyAsync.
// Every operation runs on the given stream and waits for it before returning, the blocking
// semantics of the NCCL communicator (overlapping them is for later).
#pragma once

#include <cuda_runtime_api.h>

#include <memory>

#include "parallel/row_memory.h"

namespace moe {

class CudaRowMemory : public RowMemory {
 public:
  explicit CudaRowMemory(cudaStream_t stream);
  bool host() const override { return false; }
  absl::Status Reserve(Buffer* b, size_t bytes) override;
  absl::Status CopyToHost(const void* src, size_t bytes, void* host) override;
  absl::Status CopyFromHost(const void* host, size_t bytes, void* dst) override;
  absl::Status GatherRows(const float* src, const int32_t* index, int64_t n, int64_t dim,
                          float* dst) override;
  absl::Status SumRows(const float* src, const int64_t* rows, const int64_t* begin, int64_t n,
                       int64_t dim, float* out) override;
  absl::Status SplitMeta(const int32_t* meta, int64_t n, int64_t k, int32_t* ids,
                         float* weights) override;

 private:
  absl::Status Sync();
  cudaStream_t stream_;
  Buffer index_, rows_, begin_;  // the host index arrays, uploaded
};

}  // namespace moe
