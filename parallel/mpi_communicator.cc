#include "parallel/mpi_communicator.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe {
namespace {

absl::Status MpiError(int code, const char* what) {
  if (code == MPI_SUCCESS) return absl::OkStatus();
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  return absl::UnavailableError(absl::StrCat("MPI ", what, " failed: ", std::string(text, len)));
}

// MPI counts are ints: larger messages are an error, not a silent truncation.
absl::StatusOr<std::vector<int>> Counts(const std::vector<size_t>& bytes, const char* what) {
  std::vector<int> out(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] > static_cast<size_t>(INT_MAX)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("MPI ", what, ": ", bytes[i], " bytes for one peer exceed 2 GiB"));
    }
    out[i] = static_cast<int>(bytes[i]);
  }
  return out;
}

absl::StatusOr<std::vector<int>> Displacements(const std::vector<size_t>& bytes, const char* what) {
  std::vector<size_t> off = PrefixOffsets(bytes);
  return Counts(off, what);
}

// An MPI-3 shared-memory window: every rank's segment mapped into every process.
class MpiSharedWindow final : public SharedWindow {
 public:
  static absl::StatusOr<std::unique_ptr<SharedWindow>> Create(MPI_Comm comm, size_t bytes) {
    std::unique_ptr<MpiSharedWindow> w(new MpiSharedWindow());
    w->bytes_ = bytes;
    void* mine = nullptr;
    MOE_RETURN_IF_ERROR(MpiError(MPI_Win_allocate_shared(static_cast<MPI_Aint>(bytes), 64,
                                                         MPI_INFO_NULL, comm, &mine, &w->win_),
                                 "shared window allocation"));
    int size = 0;
    MPI_Comm_size(comm, &size);
    w->segments_.resize(size);
    for (int r = 0; r < size; ++r) {
      MPI_Aint seg_bytes = 0;
      int disp = 0;
      MOE_RETURN_IF_ERROR(MpiError(
          MPI_Win_shared_query(w->win_, r, &seg_bytes, &disp, &w->segments_[r]), "shared query"));
    }
    MOE_RETURN_IF_ERROR(MpiError(MPI_Win_lock_all(MPI_MODE_NOCHECK, w->win_), "window lock"));
    return std::unique_ptr<SharedWindow>(std::move(w));
  }
  ~MpiSharedWindow() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized || win_ == MPI_WIN_NULL) return;
    MPI_Win_unlock_all(win_);
    MPI_Win_free(&win_);
  }
  char* segment(int rank) override { return static_cast<char*>(segments_[rank]); }
  size_t bytes() const override { return bytes_; }
  void Sync() override { MPI_Win_sync(win_); }

 private:
  MpiSharedWindow() = default;
  MPI_Win win_ = MPI_WIN_NULL;
  size_t bytes_ = 0;
  std::vector<void*> segments_;
};

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm node;
    MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
    int node_size = 0;
    MPI_Comm_size(node, &node_size);
    MPI_Comm_free(&node);
    one_host_ = node_size == size_;
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "mpi"; }

  absl::Status AllReduceSum(float* data, size_t count) override {
    if (count > static_cast<size_t>(INT_MAX))
      return absl::ResourceExhaustedError("all-reduce too large");
    return MpiError(
        MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(count), MPI_FLOAT, MPI_SUM, comm_),
        "all-reduce");
  }
  absl::Status AllReduceSum(int64_t* data, size_t count) override {
    if (count > static_cast<size_t>(INT_MAX))
      return absl::ResourceExhaustedError("all-reduce too large");
    return MpiError(
        MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(count), MPI_INT64_T, MPI_SUM, comm_),
        "all-reduce");
  }
  absl::Status ReduceSum(int64_t* data, size_t count, int root) override {
    if (count > static_cast<size_t>(INT_MAX))
      return absl::ResourceExhaustedError("reduce too large");
    const int n = static_cast<int>(count);
    const int rc = rank() == root
                       ? MPI_Reduce(MPI_IN_PLACE, data, n, MPI_INT64_T, MPI_SUM, root, comm_)
                       : MPI_Reduce(data, nullptr, n, MPI_INT64_T, MPI_SUM, root, comm_);
    return MpiError(rc, "reduce");
  }
  absl::Status AllGather(const void* send, size_t bytes, void* recv) override {
    MOE_ASSIGN_OR_RETURN(auto n, Counts({bytes}, "all-gather"));
    return MpiError(MPI_Allgather(send, n[0], MPI_BYTE, recv, n[0], MPI_BYTE, comm_), "all-gather");
  }
  absl::Status AllGatherV(const void* send, size_t bytes, void* recv,
                          const std::vector<size_t>& recv_bytes) override {
    MOE_ASSIGN_OR_RETURN(auto n, Counts({bytes}, "all-gather-v"));
    MOE_ASSIGN_OR_RETURN(auto counts, Counts(recv_bytes, "all-gather-v"));
    MOE_ASSIGN_OR_RETURN(auto displs, Displacements(recv_bytes, "all-gather-v"));
    return MpiError(
        MPI_Allgatherv(send, n[0], MPI_BYTE, recv, counts.data(), displs.data(), MPI_BYTE, comm_),
        "all-gather-v");
  }
  absl::Status AllToAll(const void* send, size_t bytes, void* recv) override {
    MOE_ASSIGN_OR_RETURN(auto n, Counts({bytes}, "all-to-all"));
    return MpiError(MPI_Alltoall(send, n[0], MPI_BYTE, recv, n[0], MPI_BYTE, comm_), "all-to-all");
  }
  absl::Status AllToAllV(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                         const std::vector<size_t>& recv_bytes) override {
    MOE_ASSIGN_OR_RETURN(auto sc, Counts(send_bytes, "all-to-all-v"));
    MOE_ASSIGN_OR_RETURN(auto sd, Displacements(send_bytes, "all-to-all-v"));
    MOE_ASSIGN_OR_RETURN(auto rc, Counts(recv_bytes, "all-to-all-v"));
    MOE_ASSIGN_OR_RETURN(auto rd, Displacements(recv_bytes, "all-to-all-v"));
    return MpiError(MPI_Alltoallv(send, sc.data(), sd.data(), MPI_BYTE, recv, rc.data(), rd.data(),
                                  MPI_BYTE, comm_),
                    "all-to-all-v");
  }
  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    MOE_ASSIGN_OR_RETURN(auto n, Counts({bytes}, "broadcast"));
    return MpiError(MPI_Bcast(data, n[0], MPI_BYTE, root, comm_), "broadcast");
  }
  absl::Status WaitBroadcast(void* data, size_t bytes, int root) override {
    MOE_ASSIGN_OR_RETURN(auto n, Counts({bytes}, "broadcast"));
    MPI_Request request;
    MOE_RETURN_IF_ERROR(
        MpiError(MPI_Ibcast(data, n[0], MPI_BYTE, root, comm_, &request), "broadcast"));
    // Poll with sleeps growing to 1 ms: an idle rank costs almost no CPU, a busy one < 1 ms.
    int done = 0;
    for (int wait_us = 10; !done; wait_us = std::min(2 * wait_us, 1000)) {
      MOE_RETURN_IF_ERROR(MpiError(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "broadcast"));
      if (!done) std::this_thread::sleep_for(std::chrono::microseconds(wait_us));
    }
    return absl::OkStatus();
  }
  absl::Status Barrier() override { return MpiError(MPI_Barrier(comm_), "barrier"); }
  bool on_one_host() const override { return one_host_; }
  absl::StatusOr<std::unique_ptr<SharedWindow>> AllocateShared(size_t bytes) override {
    if (!one_host_) {
      return absl::UnimplementedError("shared windows need every rank on one host");
    }
    return MpiSharedWindow::Create(comm_, bytes);
  }
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    MPI_Comm sub;
    MOE_RETURN_IF_ERROR(MpiError(MPI_Comm_split(comm_, color, key, &sub), "comm split"));
    return std::unique_ptr<Communicator>(new MpiCommunicator(sub, /*owned=*/true));
  }

 private:
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  bool one_host_ = false;
};

void FinalizeAtExit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

absl::Status MpiRuntime::Init(int* argc, char*** argv) {
  if (initialized()) return absl::OkStatus();
  int provided = 0;
  const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
  if (rc != MPI_SUCCESS) return absl::UnavailableError("MPI_Init_thread failed");
  if (provided < MPI_THREAD_SERIALIZED) {
    return absl::FailedPreconditionError("the MPI library lacks MPI_THREAD_SERIALIZED support");
  }
  std::atexit(FinalizeAtExit);
  return absl::OkStatus();
}

bool MpiRuntime::LaunchedByMpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"}) {
    if (std::getenv(var) != nullptr) return true;
  }
  return false;
}

bool MpiRuntime::initialized() {
  int flag = 0;
  MPI_Initialized(&flag);
  return flag != 0;
}

absl::StatusOr<std::unique_ptr<Communicator>> MakeMpiWorldCommunicator() {
  if (!MpiRuntime::initialized()) return absl::FailedPreconditionError("MPI is not initialised");
  MPI_Comm world;
  MOE_RETURN_IF_ERROR(MpiError(MPI_Comm_dup(MPI_COMM_WORLD, &world), "comm dup"));
  return std::unique_ptr<Communicator>(new MpiCommunicator(world, /*owned=*/true));
}

}  // namespace moe
