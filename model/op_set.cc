#include "model/op_set.h"

#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu/cpu_ops.h"
#if MOE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#include "parallel/cuda_row_memory.h"
#include "parallel/nccl_communicator.h"
#endif

namespace moe {
namespace {

#if MOE_HAVE_CUDA
// The GPU of this rank: `first` plus the rank's index among its host's ranks (Open MPI's
// OMPI_COMM_WORLD_LOCAL_RANK, or LOCAL_RANK), so that the ranks mpirun starts on one host take one
// GPU each.
int RankDevice(int first, const ParallelContext& ctx) {
  if (ctx.world().size() == 1) return first;
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK"}) {
    if (const char* v = std::getenv(name); v != nullptr) return first + std::atoi(v);
  }
  return first;
}

// On several GPUs, the layers' groups: NCCL communicators over the same ranks as ctx's, on the op
// set's stream, with the MoE dispatcher's buffers in device memory. Null on one rank.
absl::StatusOr<std::unique_ptr<ParallelContext>> DeviceGroups(Ops& ops, const ParallelContext& ctx,
                                                              int device) {
  if (ctx.world().size() == 1) return nullptr;
  const cudaStream_t stream = static_cast<CudaOps&>(ops).stream();
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> world,
                       MakeNcclCommunicator(ctx.world(), device, stream));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> tp,
                       MakeNcclCommunicator(ctx.tp(), device, stream));
  return ParallelContext::Over(ctx, std::move(world), std::move(tp),
                               std::make_unique<CudaRowMemory>(stream));
}
#endif

// The op set `options` asks for, or why this model cannot run on it.
absl::StatusOr<std::unique_ptr<Ops>> MakeOps(const ModelConfig& c, const ParallelContext& ctx,
                                             const OpSetOptions& options) {
  if (options.device == Device::kCpu) return std::make_unique<CpuOps>();
#if !MOE_HAVE_CUDA
  return absl::FailedPreconditionError(
      "device cuda: this build has no CUDA backend (nvcc was not found when it was configured, "
      "or it was configured with -DMOE_CUDA=OFF)");
#else
  if (!c.is_mla()) {
    return absl::UnimplementedError(
        absl::StrCat("the CUDA op set runs MLA models only (its attention is MLA's); ",
                     c.architectures[0], " runs on the CPU"));
  }
  if (options.two_batch_overlap) {
    return absl::UnimplementedError("two-batch overlap runs on the CPU backend only");
  }
  if (options.activations != Activations::kF32) {
    return absl::UnimplementedError(
        "rounded activations (--activations bf16 or int8) run on the CPU backend only");
  }
  if (c.kv_lora_rank > 1024 || c.qk_head_dim() > 256 || c.v_head_dim > 256 ||
      c.n_routed_experts > 1024 || c.num_experts_per_tok > 64 || c.n_group > 64) {
    return absl::UnimplementedError(absl::StrCat(
        "the CUDA kernels take kv_lora_rank <= 1024, head dims <= 256, <= 1024 experts, top-k "
        "<= 64 and <= 64 groups; this config has ",
        c.kv_lora_rank, ", ", c.qk_head_dim(), "/", c.v_head_dim, ", ", c.n_routed_experts, ", ",
        c.num_experts_per_tok, " and ", c.n_group));
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<CudaOps> ops,
                       CudaOps::Create(RankDevice(options.cuda_device, ctx)));
  return std::unique_ptr<Ops>(std::move(ops));
#endif
}

}  // namespace

absl::StatusOr<OpSet> MakeOpSet(const ModelConfig& c, const ParallelContext& ctx,
                                const OpSetOptions& options) {
  absl::StatusOr<std::unique_ptr<Ops>> ops = MakeOps(c, ctx, options);
  OpSet set;
  if (options.device == Device::kCuda && ctx.world().size() > 1) {
    // Every rank learns whether every rank has its GPU before any joins an NCCL group.
    int64_t failed = ops.ok() ? 0 : 1;
    MOE_RETURN_IF_ERROR(ctx.world().AllReduceSum(&failed, 1));
    if (!ops.ok()) return ops.status();
    if (failed > 0) {
      return absl::AbortedError(absl::StrCat(failed, " other rank(s) have no usable GPU"));
    }
#if MOE_HAVE_CUDA
    MOE_ASSIGN_OR_RETURN(set.groups,
                         DeviceGroups(**ops, ctx, RankDevice(options.cuda_device, ctx)));
#endif
  }
  if (!ops.ok()) return ops.status();
  set.ops = std::move(*ops);
  return set;
}

}  // namespace moe
