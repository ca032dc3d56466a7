#include "parallel/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe {
namespace {

absl::Status NcclError(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("NCCL ", what, " failed: ", ncclGetErrorString(r)));
}

absl::Status CudaError(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("CUDA ", what, " failed: ", cudaGetErrorString(e)));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int device, cudaStream_t stream, bool owns_stream)
      : comm_(comm), device_(device), stream_(stream), owns_stream_(owns_stream) {
    ncclCommUserRank(comm_, &rank_);
    ncclCommCount(comm_, &size_);
  }
  ~NcclCommunicator() override {
    if (scratch_ != nullptr) cudaFree(scratch_);
    ncclCommDestroy(comm_);
    if (owns_stream_) cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "nccl"; }

  absl::Status AllReduceSum(float* data, size_t count) override {
    MOE_RETURN_IF_ERROR(Use());
    MOE_RETURN_IF_ERROR(NcclError(
        ncclAllReduce(data, data, count, ncclFloat, ncclSum, comm_, stream_), "all-reduce"));
    return Wait();
  }
  absl::Status AllReduceSum(int64_t* data, size_t count) override {
    MOE_RETURN_IF_ERROR(Use());
    MOE_RETURN_IF_ERROR(NcclError(
        ncclAllReduce(data, data, count, ncclInt64, ncclSum, comm_, stream_), "all-reduce"));
    return Wait();
  }
  absl::Status AllGather(const void* send, size_t bytes, void* recv) override {
    MOE_RETURN_IF_ERROR(Use());
    MOE_RETURN_IF_ERROR(
        NcclError(ncclAllGather(send, recv, bytes, ncclUint8, comm_, stream_), "all-gather"));
    return Wait();
  }
  absl::Status AllGatherV(const void* send, size_t bytes, void* recv,
                          const std::vector<size_t>& recv_bytes) override {
    MOE_RETURN_IF_ERROR(Use());
    const std::vector<size_t> off = PrefixOffsets(recv_bytes);
    MOE_RETURN_IF_ERROR(NcclError(ncclGroupStart(), "group start"));
    for (int r = 0; r < size_; ++r) {
      ncclBroadcast(r == rank_ ? send : nullptr, static_cast<char*>(recv) + off[r], recv_bytes[r],
                    ncclUint8, r, comm_, stream_);
    }
    MOE_RETURN_IF_ERROR(NcclError(ncclGroupEnd(), "all-gather-v"));
    static_cast<void>(bytes);
    return Wait();
  }
  absl::Status AllToAll(const void* send, size_t bytes, void* recv) override {
    return AllToAllV(send, std::vector<size_t>(size_, bytes), recv,
                     std::vector<size_t>(size_, bytes));
  }
  absl::Status AllToAllV(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                         const std::vector<size_t>& recv_bytes) override {
    MOE_RETURN_IF_ERROR(Use());
    const std::vector<size_t> so = PrefixOffsets(send_bytes), ro = PrefixOffsets(recv_bytes);
    MOE_RETURN_IF_ERROR(NcclError(ncclGroupStart(), "group start"));
    for (int r = 0; r < size_; ++r) {
      if (send_bytes[r] > 0) {
        ncclSend(static_cast<const char*>(send) + so[r], send_bytes[r], ncclUint8, r, comm_,
                 stream_);
      }
      if (recv_bytes[r] > 0) {
        ncclRecv(static_cast<char*>(recv) + ro[r], recv_bytes[r], ncclUint8, r, comm_, stream_);
      }
    }
    MOE_RETURN_IF_ERROR(NcclError(ncclGroupEnd(), "all-to-all-v"));
    return Wait();
  }
  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    MOE_RETURN_IF_ERROR(Use());
    MOE_RETURN_IF_ERROR(
        NcclError(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_), "broadcast"));
    return Wait();
  }
  absl::Status Barrier() override {
    MOE_RETURN_IF_ERROR(Use());
    if (scratch_ == nullptr) {
      MOE_RETURN_IF_ERROR(CudaError(cudaMalloc(&scratch_, sizeof(float)), "cudaMalloc"));
    }
    return AllReduceSum(static_cast<float*>(scratch_), 1);
  }
  bool on_one_host() const override { return false; }
  absl::StatusOr<std::unique_ptr<SharedWindow>> AllocateShared(size_t) override {
    return absl::UnimplementedError("the NCCL backend has no host shared windows");
  }
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    MOE_RETURN_IF_ERROR(Use());
    ncclComm_t sub;
    MOE_RETURN_IF_ERROR(NcclError(ncclCommSplit(comm_, color, key, &sub, nullptr), "comm split"));
    cudaStream_t stream;
    MOE_RETURN_IF_ERROR(
        CudaError(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream create"));
    return std::unique_ptr<Communicator>(new NcclCommunicator(sub, device_, stream, true));
  }

 private:
  absl::Status Use() { return CudaError(cudaSetDevice(device_), "cudaSetDevice"); }
  absl::Status Wait() { return CudaError(cudaStreamSynchronize(stream_), "stream synchronize"); }

  ncclComm_t comm_;
  int device_;
  cudaStream_t stream_;
  bool owns_stream_;
  int rank_ = 0, size_ = 1;
  void* scratch_ = nullptr;
};

}  // namespace

int CudaDeviceCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(Communicator& bootstrap,
                                                                   int device,
                                                                   cudaStream_t stream) {
  if (device < 0 || device >= CudaDeviceCount()) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", device, " not present (", CudaDeviceCount(), " visible)"));
  }
  ncclUniqueId id;
  if (bootstrap.rank() == 0) MOE_RETURN_IF_ERROR(NcclError(ncclGetUniqueId(&id), "get unique id"));
  MOE_RETURN_IF_ERROR(bootstrap.Broadcast(&id, sizeof(id), 0));
  MOE_RETURN_IF_ERROR(CudaError(cudaSetDevice(device), "cudaSetDevice"));
  ncclComm_t comm;
  MOE_RETURN_IF_ERROR(
      NcclError(ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()), "comm init"));
  const bool own = stream == nullptr;
  if (own) {
    MOE_RETURN_IF_ERROR(
        CudaError(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream create"));
  }
  return std::unique_ptr<Communicator>(new NcclCommunicator(comm, device, stream, own));
}

}  // namespace moe
