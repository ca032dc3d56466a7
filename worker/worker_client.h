// A worker rank's side of the internal Cluster protocol (proto/moe/v1/cluster.proto).
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tls_files.h"
#include "moe/v1/cluster.grpc.pb.h"

namespace moe {

// Metadata key carrying the session on the leader's Step stream.
inline constexpr char kSessionMetadata[] = "x-moe-session";

absl::Status FromGrpc(const grpc::Status& s);

class CoordinatorClient {
 public:
  // Plaintext, or mutual TLS when `tls` is given: this rank's certificate and key, and the cluster
  // CA the coordinator's certificate must be signed by; `tls_name` is the name that certificate
  // must carry (empty: the host of `address`).
  explicit CoordinatorClient(const std::string& address, const TlsPem* tls = nullptr,
                             const std::string& tls_name = "");
  ~CoordinatorClient();

  // Retries (the coordinator may start later) until it answers or `timeout` passes.
  absl::StatusOr<moe::v1::RegisterResponse> Register(const moe::v1::RegisterRequest& request,
                                                     absl::Duration timeout);
  absl::Status ReportReady(const moe::v1::ReadyRequest& request);

  // Sends heartbeats every `interval` on a thread, each filled in by `progress` (the rank's step
  // progress) when given. `on_end` runs once (on that thread) when the coordinator asks for
  // shutdown, says the session ended, or is unreachable for `lost_after`.
  void StartHeartbeats(const std::string& session, int rank, absl::Duration interval,
                       absl::Duration lost_after,
                       std::function<void(moe::v1::HeartbeatRequest*)> progress,
                       std::function<void(const absl::Status& why)> on_end);
  void StopHeartbeats();

  // The leader's step stream.
  std::unique_ptr<grpc::ClientReaderWriter<moe::v1::StepResult, moe::v1::StepPlan>> OpenStepStream(
      grpc::ClientContext* context, const std::string& session);

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<moe::v1::Cluster::Stub> stub_;
  std::atomic<bool> stop_{false};
  std::thread heartbeat_;
};

}  // namespace moe
