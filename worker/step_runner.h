// One iteration of the serving loop on every rank of an engine. The leader (world rank 0) holds
// the coordinator's plan; it is broadcast to every rank, and every rank runs the engine step (which
// gives every rank the sampled tokens and the per-expert counts); the leader returns the result.
#pragma once

#include <atomic>
#include <cstdint>

#include "absl/status/statusor.h"
#include "moe/v1/cluster.pb.h"
#include "worker/engine.h"
#include "worker/kv_transfer.h"

namespace moe {

// What a rank is doing, read by its heartbeat thread while the step loop runs: the coordinator
// names a wedged rank from it.
struct StepProgress {
  std::atomic<int64_t> last_step{0};     // the last step this rank finished
  std::atomic<int64_t> current_step{0};  // the step it is running, 0 between steps
  std::atomic<int64_t> current_since_ms{0};  // since when (absl::ToUnixMillis)
};

class StepRunner {
 public:
  // `kv_server`: this decode rank's receiver of pushed KV (none in the main group); `tls`: the
  // cluster's identity, for pushing KV over mutual TLS.
  explicit StepRunner(Engine& engine, KvTransferServer* kv_server = nullptr,
                      const TlsPem* tls = nullptr)
      : engine_(engine), kv_server_(kv_server), pusher_(tls) {}

  // Collective. On the leader `plan` is the coordinator's and is sent; on the others it is
  // replaced by what the leader sent. Idle ranks sleep while they wait.
  absl::Status SharePlan(moe::v1::StepPlan* plan);
  // Collective: runs a shared plan; the result for the coordinator (the same on every rank).
  absl::StatusOr<moe::v1::StepResult> Run(const moe::v1::StepPlan& plan);

  const StepProgress& progress() const { return progress_; }

 private:
  absl::StatusOr<moe::v1::StepResult> RunStep(const moe::v1::StepPlan& plan);
  // Collective: this rank's pushes of the plan's KV transfers, then one sum over the world of
  // every transfer's failures and bytes, into the result.
  absl::Status TransferKv(const moe::v1::StepPlan& plan, moe::v1::StepResult* result);

  Engine& engine_;
  KvTransferServer* const kv_server_;
  KvPusher pusher_;
  StepProgress progress_;
};

}  // namespace moe
