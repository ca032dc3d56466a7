#include "coordinator/cluster.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"

namespace moe {

const char* PhaseName(Cluster::Phase p) {
  switch (p) {
    case Cluster::Phase::kWaitingForWorkers:
      return "waiting for workers";
    case Cluster::Phase::kLoading:
      return "loading";
    case Cluster::Phase::kServing:
      return "serving";
    case Cluster::Phase::kFailed:
      return "failed";
    case Cluster::Phase::kShuttingDown:
      return "shutting down";
  }
  return "?";
}

Cluster::Cluster(ShardPlan plan, Options options, PhaseCallback on_phase)
    : plan_(std::move(plan)),
      options_(options),
      on_phase_(std::move(on_phase)),
      step_deadline_(options.step_deadline) {
  std::lock_guard<std::mutex> lock(mu_);
  NewSessionLocked();
}

void Cluster::NewSessionLocked() {
  std::random_device rd;
  session_ = absl::StrFormat("%ss%d-%08x", options_.group.empty() ? "" : options_.group + "-",
                             ++sessions_, rd());
  workers_.clear();
  leader_ = nullptr;
  failure_.clear();
  step_deadline_.Reset();
  step_in_flight_.reset();
  SetPhaseLocked(Phase::kWaitingForWorkers, "new session " + session_);
}

void Cluster::SetPhaseLocked(Phase phase, const std::string& why) {
  phase_ = phase;
  pending_.emplace_back(phase, why);
  cv_.notify_all();
}

void Cluster::Notify() {
  std::lock_guard<std::mutex> order(notify_mu_);
  std::vector<std::pair<Phase, std::string>> events;
  {
    std::lock_guard<std::mutex> lock(mu_);
    events.swap(pending_);
  }
  for (const auto& [phase, why] : events) on_phase_(phase, why);
}

absl::StatusOr<moe::v1::RegisterResponse> Cluster::Register(const moe::v1::RegisterRequest& r,
                                                            absl::Duration wait) {
  const int world = plan_.world_size();
  std::string session;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (phase_ == Phase::kShuttingDown)
      return absl::UnavailableError("the coordinator is shutting down");
    if (r.world_size() != world) {
      return absl::InvalidArgumentError(absl::StrCat(
          "worker launched with world size ", r.world_size(), ", the coordinator expects ", world));
    }
    if (r.rank() < 0 || r.rank() >= world) {
      return absl::InvalidArgumentError(
          absl::StrCat("rank ", r.rank(), " outside [0, ", world, ")"));
    }
    if (phase_ == Phase::kFailed) NewSessionLocked();
    if (phase_ == Phase::kLoading || phase_ == Phase::kServing) {
      const std::string why =
          absl::StrCat("rank ", r.rank(), " registered again (restarted on ", r.host(), ")");
      MOE_LOG(WARNING) << why << ": ending session " << session_;
      FailLocked(why);
      NewSessionLocked();
    }
    if (!workers_.empty() && workers_.begin()->second.info.collective() != r.collective()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "rank ", r.rank(), " uses ", r.collective(), " collectives, rank ",
          workers_.begin()->first, " uses ", workers_.begin()->second.info.collective()));
    }
    workers_[r.rank()] = Worker{r, absl::Now(), false, {}, ""};
    session = session_;
    MOE_LOG(INFO) << Name() << "rank " << r.rank() << " registered from " << r.host() << " (pid "
                  << r.pid() << "): " << workers_.size() << " of " << world;
    if (static_cast<int>(workers_.size()) == world) {
      for (auto& [rank, w] : workers_) w.last_heartbeat = absl::Now();
      SetPhaseLocked(Phase::kLoading, "all workers registered");
    }
  }
  Notify();
  std::unique_lock<std::mutex> lock(mu_);
  const bool done = cv_.wait_for(lock, absl::ToChronoNanoseconds(wait), [&] {
    return session_ != session || phase_ != Phase::kWaitingForWorkers;
  });
  if (session_ != session || phase_ == Phase::kFailed || phase_ == Phase::kShuttingDown) {
    return absl::UnavailableError(absl::StrCat("registration abandoned: ", DescribeLocked()));
  }
  if (!done) {
    const std::string why = DescribeLocked();
    workers_.erase(r.rank());  // a later attempt registers afresh
    return absl::DeadlineExceededError(
        absl::StrCat("gave up after ", absl::FormatDuration(wait), ": ", why));
  }
  moe::v1::RegisterResponse resp;
  resp.set_session(session_);
  resp.set_world_size(world);
  resp.set_tp_size(plan_.tp_size());
  resp.set_kv_block_size(options_.kv_block_size);
  resp.set_kv_blocks(options_.kv_blocks);
  resp.set_mtp(options_.mtp);
  resp.set_mtp_draft_tokens(options_.mtp_draft_tokens);
  resp.set_redundant_experts(options_.redundant_experts);
  resp.set_two_batch_overlap(options_.two_batch_overlap);
  const RankShard shard = plan_.Shard(r.rank());
  moe::v1::ShardAssignment* a = resp.mutable_shard();
  a->set_rank(shard.rank);
  a->set_tp_rank(shard.tp_rank);
  a->set_dp_rank(shard.dp_rank);
  a->set_heads_begin(shard.heads.begin);
  a->set_heads_end(shard.heads.end);
  a->mutable_experts()->Add(shard.experts.begin(), shard.experts.end());
  for (const auto& [rank, w] : workers_) resp.add_peer_addresses(w.info.collective_address());
  return resp;
}

absl::Status Cluster::Ready(const moe::v1::ReadyRequest& r) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (r.session() != session_ || phase_ != Phase::kLoading) {
      return absl::FailedPreconditionError(
          absl::StrCat("session ", r.session(), " is not loading"));
    }
    auto it = workers_.find(r.rank());
    if (it == workers_.end()) return absl::InvalidArgumentError("unknown rank");
    it->second.ready = true;
    it->second.kv_address = r.kv_address();
    MOE_LOG(INFO) << Name() << "rank " << r.rank() << " ready: " << r.weight_bytes_detail()
                  << (r.kv_address().empty() ? "" : "; KV transfers to " + r.kv_address());
    bool all = true;
    for (const auto& [rank, w] : workers_) all &= w.ready;
    if (all) SetPhaseLocked(Phase::kServing, "every worker loaded its shard");
  }
  Notify();
  return absl::OkStatus();
}

absl::StatusOr<bool> Cluster::Heartbeat(const moe::v1::HeartbeatRequest& r) {
  std::lock_guard<std::mutex> lock(mu_);
  if (r.session() != session_ || phase_ == Phase::kFailed || phase_ == Phase::kWaitingForWorkers) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", r.session(), " has ended",
                     failure_.empty() ? "" : absl::StrCat(" (", failure_, ")")));
  }
  auto it = workers_.find(r.rank());
  if (it != workers_.end()) {
    it->second.last_heartbeat = absl::Now();
    it->second.progress = r;
  }
  return released_;
}

void Cluster::Check() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (phase_ != Phase::kLoading && phase_ != Phase::kServing) return;
    const absl::Time now = absl::Now();
    std::string why = CheckHeartbeatsLocked(now);
    if (why.empty()) why = CheckStepLocked(now);
    if (!why.empty()) FailLocked(why);
  }
  Notify();
}

std::string Cluster::CheckHeartbeatsLocked(absl::Time now) const {
  for (const auto& [rank, w] : workers_) {
    if (now - w.last_heartbeat > options_.heartbeat_timeout) {
      return absl::StrCat("rank ", rank, " (", w.info.host(), ") sent no heartbeat for ",
                          absl::FormatDuration(options_.heartbeat_timeout));
    }
  }
  return "";
}

std::string Cluster::CheckStepLocked(absl::Time now) const {
  if (!step_in_flight_ || now - step_in_flight_->sent <= step_in_flight_->deadline) return "";
  const StepInFlight& s = *step_in_flight_;
  return absl::StrCat("step ", s.step, " (", s.tokens, " tokens) has run for ",
                      absl::FormatDuration(absl::Trunc(now - s.sent, absl::Milliseconds(1))),
                      ", past its deadline of ", absl::FormatDuration(s.deadline),
                      " (every rank still sends heartbeats: a rank is wedged; ",
                      RankProgressLocked(), ")");
}

// "rank 0 (host-a): in step 42 for 5.1s; rank 1 (host-b): finished step 41, not in a step".
std::string Cluster::RankProgressLocked() const {
  std::vector<std::string> parts;
  for (const auto& [rank, w] : workers_) {
    const moe::v1::HeartbeatRequest& p = w.progress;
    parts.push_back(
        p.current_step() > 0
            ? absl::StrCat("rank ", rank, " (", w.info.host(), "): in step ", p.current_step(),
                           " for ", absl::FormatDuration(absl::Milliseconds(p.current_step_ms())))
            : absl::StrCat("rank ", rank, " (", w.info.host(), "): finished step ", p.last_step(),
                           ", not in a step"));
  }
  return absl::StrJoin(parts, "; ");
}

void Cluster::StepSent(int64_t step, int64_t tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  step_in_flight_ = StepInFlight{step, tokens, absl::Now(), step_deadline_.For(tokens)};
}

void Cluster::StepDone(int64_t step) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!step_in_flight_ || step_in_flight_->step != step) return;
  step_deadline_.Record(step_in_flight_->tokens, absl::Now() - step_in_flight_->sent);
  step_in_flight_.reset();
}

absl::Status Cluster::AttachLeader(const std::string& session, grpc::ServerContext* context) {
  std::lock_guard<std::mutex> lock(mu_);
  if (session != session_ || (phase_ != Phase::kLoading && phase_ != Phase::kServing)) {
    return absl::FailedPreconditionError(absl::StrCat("session ", session, " is not current"));
  }
  if (leader_ != nullptr) return absl::AlreadyExistsError("a leader is already attached");
  leader_ = context;
  return absl::OkStatus();
}

void Cluster::DetachLeader(grpc::ServerContext* context) {
  std::lock_guard<std::mutex> lock(mu_);
  if (leader_ == context) leader_ = nullptr;
  cv_.notify_all();
}

bool Cluster::leader_attached() const {
  std::lock_guard<std::mutex> lock(mu_);
  return leader_ != nullptr;
}

void Cluster::Fail(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (phase_ == Phase::kFailed || phase_ == Phase::kShuttingDown) return;
    FailLocked(why);
  }
  Notify();
}

void Cluster::FailLocked(const std::string& why) {
  failure_ = why;
  MOE_LOG(ERROR) << Name() << why << ": the cluster failed";
  SetPhaseLocked(Phase::kFailed, why);
  step_in_flight_.reset();
  if (leader_ != nullptr) leader_->TryCancel();
}

void Cluster::BeginShutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    SetPhaseLocked(Phase::kShuttingDown, "shutdown requested");
  }
  Notify();
}

void Cluster::ReleaseWorkers() {
  std::lock_guard<std::mutex> lock(mu_);
  released_ = true;
}

Cluster::Phase Cluster::phase() const {
  std::lock_guard<std::mutex> lock(mu_);
  return phase_;
}

std::string Cluster::session() const {
  std::lock_guard<std::mutex> lock(mu_);
  return session_;
}

bool Cluster::IsCurrent(const std::string& session) const {
  std::lock_guard<std::mutex> lock(mu_);
  return session == session_ && phase_ != Phase::kFailed;
}

bool Cluster::WaitFor(Phase phase, absl::Duration timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] { return phase_ == phase; });
}

std::vector<std::string> Cluster::KvAddresses(int dp_group) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  if (phase_ != Phase::kServing) return out;
  const int tp = plan_.tp_size();
  for (int r = dp_group * tp; r < (dp_group + 1) * tp; ++r) {
    auto it = workers_.find(r);
    out.push_back(it == workers_.end() ? "" : it->second.kv_address);
  }
  return out;
}

std::string Cluster::Name() const {
  return options_.group.empty() ? "" : options_.group + " group: ";
}

std::string Cluster::Describe() const {
  std::lock_guard<std::mutex> lock(mu_);
  return DescribeLocked();
}

std::string Cluster::DescribeLocked() const {
  const int world = plan_.world_size();
  switch (phase_) {
    case Phase::kWaitingForWorkers: {
      std::vector<int> missing;
      for (int r = 0; r < world; ++r) {
        if (!workers_.count(r)) missing.push_back(r);
      }
      return absl::StrCat("waiting for workers: ", workers_.size(), " of ", world,
                          " registered (missing ranks ", absl::StrJoin(missing, ", "), ")");
    }
    case Phase::kLoading: {
      std::vector<int> loading;
      for (const auto& [rank, w] : workers_) {
        if (!w.ready) loading.push_back(rank);
      }
      return absl::StrCat("workers loading their shards (ranks ", absl::StrJoin(loading, ", "),
                          " not ready)");
    }
    case Phase::kServing:
      return "serving";
    case Phase::kFailed:
      return absl::StrCat("the worker group failed: ", failure_,
                          "; waiting for the workers to be restarted");
    case Phase::kShuttingDown:
      return "shutting down";
  }
  return "?";
}

}  // namespace moe
