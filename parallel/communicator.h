// Communicator: the collectives one engine of W ranks needs, behind one interface. Backends:
// self (a single rank, no MPI at all), Open MPI (host memory) and NCCL (device memory).
// Buffers are byte ranges except for the reductions; every call is collective over the group.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"

namespace moe {

// Memory every rank of a group can read and write: one segment per rank, allocated together.
// Only where all ranks share one host's memory (MPI shared-memory windows); writes become
// visible to the other ranks after Sync() on both sides and a Barrier() between.
class SharedWindow {
 public:
  virtual ~SharedWindow() = default;
  virtual char* segment(int rank) = 0;  // rank's segment, mapped into this process
  virtual size_t bytes() const = 0;     // size of each segment
  virtual void Sync() = 0;              // memory barrier for the window
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const char* backend() const = 0;

  virtual absl::Status AllReduceSum(float* data, size_t count) = 0;
  virtual absl::Status AllReduceSum(int64_t* data, size_t count) = 0;
  // The sum lands on `root` only (the other ranks' data is left as it was): what only one rank
  // needs, e.g. the sampled tokens the leader reports. By default an all-reduce.
  virtual absl::Status ReduceSum(int64_t* data, size_t count, int root) {
    return AllReduceSum(data, count);
  }
  // recv holds size() * bytes: rank r's `bytes` at offset r * bytes.
  virtual absl::Status AllGather(const void* send, size_t bytes, void* recv) = 0;
  // recv_bytes[r] bytes from rank r, packed in rank order.
  virtual absl::Status AllGatherV(const void* send, size_t bytes, void* recv,
                                  const std::vector<size_t>& recv_bytes) = 0;
  // send holds size() * bytes (the part for rank r at r * bytes); recv likewise.
  virtual absl::Status AllToAll(const void* send, size_t bytes, void* recv) = 0;
  // send_bytes[r] bytes for rank r packed in rank order; recv_bytes[r] from rank r likewise.
  virtual absl::Status AllToAllV(const void* send, const std::vector<size_t>& send_bytes,
                                 void* recv, const std::vector<size_t>& recv_bytes) = 0;
  virtual absl::Status Broadcast(void* data, size_t bytes, int root) = 0;
  // A broadcast the receivers may wait on for a long time (the next step of an idle server):
  // backends that would spin while waiting sleep between polls instead.
  virtual absl::Status WaitBroadcast(void* data, size_t bytes, int root) {
    return Broadcast(data, bytes, root);
  }
  virtual absl::Status Barrier() = 0;
  // True when every rank of the group shares this host's memory.
  virtual bool on_one_host() const = 0;
  // Collective: a window of `bytes` per rank; Unimplemented unless on_one_host().
  virtual absl::StatusOr<std::unique_ptr<SharedWindow>> AllocateShared(size_t bytes) = 0;
  // Sub-groups: ranks passing the same color form one group, ordered by key.
  virtual absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) = 0;
};

// The trivial group of one rank.
std::unique_ptr<Communicator> MakeSelfCommunicator();

// Offsets of a packed layout: offsets[r] = sum of sizes[0..r).
std::vector<size_t> PrefixOffsets(const std::vector<size_t>& sizes);

}  // namespace moe
