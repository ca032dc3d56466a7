// RowMemory: where a MoE dispatcher's exchange buffers live and how rows move inside them. The
// dispatcher plans on the host (counts, destinations, the routing entries of each row) and moves
// the rows only through this interface and its communicator, so one all-to-all-v path serves
//   host memory (the CPU engine, with Open MPI or TCP collectives): HostRowMemory;
//   device memory (the CUDA engine, with NCCL, whose collectives read device buffers):
//     CudaRowMemory (parallel/cuda_row_memory.h), copies and kernels on a CUDA stream.
// The communicator given to the dispatcher must read and write this memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"

namespace moe {

class RowMemory {
 public:
  // A buffer of this memory; `owner` frees it.
  struct Buffer {
    void* data = nullptr;
    size_t bytes = 0;
    std::shared_ptr<void> owner;
    float* floats() const { return static_cast<float*>(data); }
    int32_t* ints() const { return static_cast<int32_t*>(data); }
  };

  virtual ~RowMemory() = default;
  // True when the host reads this memory directly (what the shared-memory transport needs).
  virtual bool host() const = 0;
  // Makes `b` hold at least `bytes` (its contents are not kept when it grows; it at least doubles).
  virtual absl::Status Reserve(Buffer* b, size_t bytes) = 0;
  // Copies between host memory and this memory; they complete before returning.
  virtual absl::Status CopyToHost(const void* src, size_t bytes, void* host) = 0;
  virtual absl::Status CopyFromHost(const void* host, size_t bytes, void* dst) = 0;
  // dst row i = src row index[i] for i < n, rows of `dim` floats; `index` is host memory.
  virtual absl::Status GatherRows(const float* src, const int32_t* index, int64_t n, int64_t dim,
                                  float* dst) = 0;
  // out row t = the sum of src rows rows[begin[t]], ..., rows[begin[t + 1] - 1], in that order
  // (zero when there are none), for t < n; `rows` and `begin` are host memory.
  virtual absl::Status SumRows(const float* src, const int64_t* rows, const int64_t* begin,
                               int64_t n, int64_t dim, float* out) = 0;
  // Splits n routing rows [k local expert ids (int32) | k weights (float bits)] into ids [n, k]
  // and weights [n, k].
  virtual absl::Status SplitMeta(const int32_t* meta, int64_t n, int64_t k, int32_t* ids,
                                 float* weights) = 0;
};

class HostRowMemory : public RowMemory {
 public:
  bool host() const override { return true; }
  absl::Status Reserve(Buffer* b, size_t bytes) override;
  absl::Status CopyToHost(const void* src, size_t bytes, void* host) override;
  absl::Status CopyFromHost(const void* host, size_t bytes, void* dst) override;
  absl::Status GatherRows(const float* src, const int32_t* index, int64_t n, int64_t dim,
                          float* dst) override;
  absl::Status SumRows(const float* src, const int64_t* rows, const int64_t* begin, int64_t n,
                       int64_t dim, float* out) override;
  absl::Status SplitMeta(const int32_t* meta, int64_t n, int64_t k, int32_t* ids,
                         float* weights) override;

  // out row t = the sum of the rows src[begin[t]], ..., src[begin[t + 1] - 1] (host pointers).
  static void SumRowPointers(const float* const* src, const int64_t* begin, int64_t n, int64_t dim,
                             float* out);
};

// The process's host memory (stateless, shared by every dispatcher).
HostRowMemory* DefaultHostRowMemory();

}  // namespace moe
