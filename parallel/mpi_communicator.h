// The Open MPI backend of Communicator (host memory). MpiRuntime initialises MPI once per process
// (MPI_THREAD_SERIALIZED: collectives come from one thread at a time) and finalises it at exit.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace moe {

class MpiRuntime {
 public:
  // Initialises MPI (idempotent). Errors when the library cannot start.
  static absl::Status Init(int* argc, char*** argv);
  // True when this process was started by an MPI launcher (mpirun, srun, ...).
  static bool LaunchedByMpi();
  static bool initialized();
};

// The world communicator. MPI must be initialised.
absl::StatusOr<std::unique_ptr<Communicator>> MakeMpiWorldCommunicator();

}  // namespace moe
