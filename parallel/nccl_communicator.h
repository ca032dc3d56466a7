// The NCCL backend of Communicator: buffers are device memory; each operation is enqueued on the
// communicator's CUDA stream and synchronised before it returns (the same blocking semantics as
// the MPI backend). The unique id is bootstrapped over another communicator — MPI when launched by
// mpirun, the coordinator's gRPC channel otherwise.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace moe {

// Collective over `bootstrap`: rank 0 creates the NCCL unique id and broadcasts it; every rank
// joins with its bootstrap rank on CUDA device `device`. The operations run on `stream` (not
// owned), after the work already there — the stream the buffers are written on — or, when null, on
// a stream of the communicator's own.
absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(Communicator& bootstrap,
                                                                   int device,
                                                                   cudaStream_t stream = nullptr);

// Number of CUDA devices visible (0 when there is no GPU or no driver).
int CudaDeviceCount();

}  // namespace moe
