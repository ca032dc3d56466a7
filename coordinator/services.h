// The coordinator's gRPC services: the public moe.v1.Inference and the internal moe.v1.Cluster
// (whose Step stream, held by the leader worker, is where the serving loop runs).
#pragma once

#include <string>

#include "common/model_config.h"
#include "coordinator/api_keys.h"
#include "coordinator/cluster.h"
#include "coordinator/expert_balancer.h"
#include "coordinator/metrics.h"
#include "coordinator/model_text.h"
#include "coordinator/scheduler.h"
#include "coordinator/validation.h"
#include "moe/v1/cluster.grpc.pb.h"
#include "moe/v1/inference.grpc.pb.h"

namespace moe {

struct ServingContext {
  const ModelConfig* config;
  Cluster* cluster;         // the main worker group (it receives the requests)
  Cluster* decode_cluster;  // prefill/decode disaggregation: the decode group; else null
  Scheduler* scheduler;
  ExpertBalancer* balancer;  // EPLB while serving
  Metrics* metrics;
  RequestLimits limits;
  int kv_block_size;
  int64_t kv_blocks;  // per DP group
  const ApiKeys* api_keys;
  const ModelText* text;  // the tokenizer and chat template, or why they are missing
};

// Whether every worker group is serving (`decode` may be null); `why` describes them.
bool Serving(const Cluster& main, const Cluster* decode, std::string* why = nullptr);
inline bool Serving(const ServingContext& ctx, std::string* why = nullptr) {
  return Serving(*ctx.cluster, ctx.decode_cluster, why);
}

// Every call of the public service first checks its API key (UNAUTHENTICATED without a valid one).
class InferenceService final : public moe::v1::Inference::Service {
 public:
  explicit InferenceService(ServingContext ctx) : ctx_(ctx) {}
  grpc::Status Generate(grpc::ServerContext* context, const moe::v1::GenerateRequest* request,
                        grpc::ServerWriter<moe::v1::GenerateResponse>* writer) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const moe::v1::GetModelInfoRequest*,
                            moe::v1::ModelInfo* info) override;

 private:
  grpc::Status Authorize(const grpc::ServerContext& context) const;
  ServingContext ctx_;
};

class ClusterService final : public moe::v1::Cluster::Service {
 public:
  ClusterService(ServingContext ctx, absl::Duration register_wait)
      : ctx_(ctx), register_wait_(register_wait) {}
  grpc::Status Register(grpc::ServerContext*, const moe::v1::RegisterRequest* request,
                        moe::v1::RegisterResponse* response) override;
  grpc::Status ReportReady(grpc::ServerContext*, const moe::v1::ReadyRequest* request,
                           moe::v1::ReadyResponse*) override;
  grpc::Status Heartbeat(grpc::ServerContext*, const moe::v1::HeartbeatRequest* request,
                         moe::v1::HeartbeatResponse* response) override;
  // The serving loop: plan a step, send it to the leader, apply its result.
  grpc::Status Step(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<moe::v1::StepPlan, moe::v1::StepResult>* stream) override;

 private:
  // The worker group a rank joins ("" or "decode"), or the one a session belongs to.
  absl::StatusOr<Cluster*> ForGroup(const std::string& group) const;
  Cluster* ForSession(const std::string& session) const;
  // Disaggregation: the decode ranks each of the plan's KV transfers goes to, and their session.
  void AddKvPeers(moe::v1::StepPlan* plan) const;

  ServingContext ctx_;
  absl::Duration register_wait_;
};

grpc::Status ToGrpc(const absl::Status& s);

}  // namespace moe
