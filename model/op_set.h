// The op set a model runs over (kernels/ops.h) and the groups its layers' collectives use: the
// CPU's ops with the engine's groups, or one GPU per rank (CudaOps; MLA models, float32
// activations, no two-batch overlap) with, on several ranks, NCCL groups over device memory.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "kernels/ops.h"
#include "parallel/parallel_context.h"

namespace moe {

struct OpSet {
  std::unique_ptr<Ops> ops;
  std::unique_ptr<ParallelContext> groups;  // the layers' groups; null: the engine's
};

struct OpSetOptions {
  Device device = Device::kCpu;
  // A rank's GPU: this plus the rank's index among its host's ranks (Open MPI's
  // OMPI_COMM_WORLD_LOCAL_RANK, or LOCAL_RANK).
  int cuda_device = 0;
  bool two_batch_overlap = false;               // CPU only
  Activations activations = Activations::kF32;  // rounded ones: CPU only
};

// The op set, or why this model cannot run on it (a clear error). On several GPUs collective over
// ctx's world: every rank learns whether every rank has its GPU before any joins an NCCL group.
absl::StatusOr<OpSet> MakeOpSet(const ModelConfig& config, const ParallelContext& ctx,
                                const OpSetOptions& options);

}  // namespace moe
