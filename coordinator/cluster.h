// The workers as the coordinator sees them, one session at a time:
//   waiting for workers -> loading (all W registered) -> serving (all W loaded their shard)
//   -> failed (a heartbeat missed, a step ran past its deadline, the leader's stream broke, a
//   worker restarted) -> waiting ...
//   any -> shutting down (SIGTERM).
// A session is one incarnation of the worker group; workers of an ended session are told so on
// their next heartbeat (and exit), and a group that registers again starts a new one. Phase
// changes are reported to a callback outside the lock.
#pragma once

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/model_config.h"
#include "coordinator/step_deadline.h"
#include "moe/v1/cluster.pb.h"
#include "parallel/shard_plan.h"

namespace moe {

class Cluster {
 public:
  enum class Phase { kWaitingForWorkers, kLoading, kServing, kFailed, kShuttingDown };
  struct Options {
    // The worker group's name in its sessions and messages: "" for the main group, "decode" for
    // the decode group of a disaggregated deployment.
    std::string group;
    int kv_block_size = 64;
    int64_t kv_blocks = 0;  // per rank
    bool mtp = false;       // the workers load the MTP layer (speculative decoding)
    int mtp_draft_tokens = 1;  // and draft this many tokens a step
    int64_t redundant_experts = 0;  // EPLB replicas (the workers' ShardPlan)
    bool two_batch_overlap = false;  // the workers' EngineOptions::two_batch_overlap
    absl::Duration heartbeat_timeout = absl::Seconds(10);
    StepDeadlineOptions step_deadline;
  };
  using PhaseCallback = std::function<void(Phase phase, const std::string& why)>;

  Cluster(ShardPlan plan, Options options, PhaseCallback on_phase);

  // Blocks until every rank has registered (or `wait` passes: DEADLINE_EXCEEDED).
  absl::StatusOr<moe::v1::RegisterResponse> Register(const moe::v1::RegisterRequest& request,
                                                     absl::Duration wait);
  absl::Status Ready(const moe::v1::ReadyRequest& request);
  // FAILED_PRECONDITION for an ended session; true asks the worker to exit.
  absl::StatusOr<bool> Heartbeat(const moe::v1::HeartbeatRequest& request);
  // Fails the session if a rank's last heartbeat is older than the timeout, or if the step in
  // flight has run past its deadline (its ranks are alive but wedged: the failure names where
  // each rank's heartbeats say it is).
  void Check();

  // The leader's step loop: a plan was sent / its result came back.
  void StepSent(int64_t step, int64_t tokens);
  void StepDone(int64_t step);

  // The leader's Step stream: `context` is cancelled when the session fails.
  absl::Status AttachLeader(const std::string& session, grpc::ServerContext* context);
  void DetachLeader(grpc::ServerContext* context);
  bool leader_attached() const;

  void Fail(const std::string& why);
  void BeginShutdown();
  void ReleaseWorkers();  // heartbeats now answer "shut down"

  Phase phase() const;
  std::string session() const;
  bool IsCurrent(const std::string& session) const;
  bool WaitFor(Phase phase, absl::Duration timeout) const;
  // "serving", or why not: "waiting for workers: 2 of 4 registered (missing ranks 1, 3)", ...
  std::string Describe() const;
  const ShardPlan& plan() const { return plan_; }
  // Disaggregation: the KvTransfer addresses of DP group `dp_group`'s ranks, in TP order, as
  // their ready reports gave them (empty unless serving).
  std::vector<std::string> KvAddresses(int dp_group) const;

 private:
  struct Worker {
    moe::v1::RegisterRequest info;
    absl::Time last_heartbeat;
    bool ready = false;
    moe::v1::HeartbeatRequest progress;  // the last heartbeat's step progress
    std::string kv_address;              // a decode-group rank's KvTransfer service
  };
  struct StepInFlight {
    int64_t step;
    int64_t tokens;
    absl::Time sent;
    absl::Duration deadline;
  };
  std::string Name() const;  // "decode group: " (empty for the main group), for messages
  void FailLocked(const std::string& why);
  std::string CheckHeartbeatsLocked(absl::Time now) const;  // why the session failed, or ""
  std::string CheckStepLocked(absl::Time now) const;
  std::string RankProgressLocked() const;
  void NewSessionLocked();
  void SetPhaseLocked(Phase phase, const std::string& why);
  std::string DescribeLocked() const;
  void Notify();  // runs the pending phase callback, outside the lock

  const ShardPlan plan_;
  const Options options_;
  const PhaseCallback on_phase_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  Phase phase_ = Phase::kWaitingForWorkers;
  std::string session_;
  int64_t sessions_ = 0;
  std::string failure_;
  std::map<int, Worker> workers_;
  StepDeadline step_deadline_;
  std::optional<StepInFlight> step_in_flight_;
  grpc::ServerContext* leader_ = nullptr;
  bool released_ = false;
  std::vector<std::pair<Phase, std::string>> pending_;
  std::mutex notify_mu_;  // keeps callbacks in order
};

const char* PhaseName(Cluster::Phase phase);

}  // namespace moe
