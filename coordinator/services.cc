#include "coordinator/services.h"

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "coordinator/generation.h"
#include "coordinator/validation.h"

namespace moe {

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

namespace {

constexpr char kSessionMetadata[] = "x-moe-session";
constexpr char kDecodeGroup[] = "decode";

}  // namespace

bool Serving(const Cluster& main, const Cluster* decode, std::string* why) {
  if (why != nullptr) {
    *why = decode == nullptr ? main.Describe()
                             : absl::StrCat("main group: ", main.Describe(),
                                            "; decode group: ", decode->Describe());
  }
  return main.phase() == Cluster::Phase::kServing &&
         (decode == nullptr || decode->phase() == Cluster::Phase::kServing);
}

// New tokens wake a Generate handler at once (the request's condition variable); this only bounds
// how late it notices that its client went away (the synchronous gRPC API has no callback for it).
constexpr absl::Duration kCancellationCheck = absl::Milliseconds(100);

grpc::Status InferenceService::Authorize(const grpc::ServerContext& context) const {
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  const absl::string_view value = it == metadata.end()
                                      ? absl::string_view()
                                      : absl::string_view(it->second.data(), it->second.size());
  if (ctx_.api_keys->Allows(value)) return grpc::Status::OK;
  return grpc::Status(
      grpc::StatusCode::UNAUTHENTICATED,
      it == metadata.end()
          ? "this server needs an API key: send the metadata authorization: Bearer KEY"
          : "the API key is not valid");
}

grpc::Status InferenceService::Generate(grpc::ServerContext* context,
                                        const moe::v1::GenerateRequest* request,
                                        grpc::ServerWriter<moe::v1::GenerateResponse>* writer) {
  if (grpc::Status s = Authorize(*context); !s.ok()) return s;
  auto started = Generation::Start(ctx_, *request);
  if (!started.ok()) return ToGrpc(started.status());
  Generation& gen = **started;
  while (true) {
    Generation::Chunk chunk;
    const bool ended = gen.Next(kCancellationCheck, &chunk);
    moe::v1::GenerateResponse resp;
    resp.mutable_token_ids()->Add(chunk.tokens.begin(), chunk.tokens.end());
    resp.set_text(std::move(chunk.text));
    for (moe::v1::TokenLogprobs& lp : chunk.logprobs) *resp.add_logprobs() = std::move(lp);
    if (ended && !gen.status().ok()) {
      if (resp.token_ids_size() > 0) writer->Write(resp);
      return ToGrpc(gen.status());
    }
    if (resp.token_ids_size() > 0 || ended) {
      if (ended) {
        resp.set_finish_reason(gen.finish_reason());
        resp.mutable_usage()->set_prompt_tokens(static_cast<int32_t>(gen.prompt_tokens()));
        resp.mutable_usage()->set_completion_tokens(static_cast<int32_t>(gen.completion_tokens()));
      }
      if (!writer->Write(resp)) {
        gen.Cancel();
        return ToGrpc(gen.status());
      }
    }
    if (ended) return grpc::Status::OK;
    if (context->IsCancelled()) {
      gen.Cancel();
      return ToGrpc(gen.status());
    }
  }
}

grpc::Status InferenceService::GetModelInfo(grpc::ServerContext* context,
                                            const moe::v1::GetModelInfoRequest*,
                                            moe::v1::ModelInfo* info) {
  if (grpc::Status s = Authorize(*context); !s.ok()) return s;
  const ModelConfig& c = *ctx_.config;
  const ShardPlan& plan = ctx_.cluster->plan();
  const ParamCounts p = c.CountParameters();
  info->set_model_type(c.model_type);
  info->set_vocab_size(c.vocab_size);
  info->set_max_position_embeddings(c.max_position_embeddings);
  info->set_num_hidden_layers(c.num_hidden_layers);
  info->set_hidden_size(c.hidden_size);
  info->set_n_routed_experts(c.n_routed_experts);
  info->set_num_experts_per_tok(c.num_experts_per_tok);
  info->set_total_parameters(p.total);
  info->set_active_parameters(p.active);
  for (int64_t id : c.eos_token_ids) info->add_eos_token_ids(static_cast<int32_t>(id));
  info->set_world_size(plan.world_size());
  info->set_tp_size(plan.tp_size());
  info->set_dp_size(plan.dp_size());
  info->set_kv_block_size(ctx_.kv_block_size);
  info->set_kv_blocks_per_dp_group(ctx_.kv_blocks);
  if (ctx_.text->tokenizer != nullptr) info->set_tokenizer(ctx_.text->tokenizer->source());
  return grpc::Status::OK;
}

absl::StatusOr<Cluster*> ClusterService::ForGroup(const std::string& group) const {
  if (group.empty()) return ctx_.cluster;
  if (group == kDecodeGroup) {
    if (ctx_.decode_cluster != nullptr) return ctx_.decode_cluster;
    return absl::InvalidArgumentError(
        "this coordinator has no decode group (start it with --decode-world-size N)");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown worker group \"", group, "\" (--group main or decode)"));
}

Cluster* ClusterService::ForSession(const std::string& session) const {
  // An ended session of either group goes to the main group, which answers that it ended.
  return ctx_.decode_cluster != nullptr && ctx_.decode_cluster->session() == session
             ? ctx_.decode_cluster
             : ctx_.cluster;
}

void ClusterService::AddKvPeers(moe::v1::StepPlan* plan) const {
  if (ctx_.decode_cluster == nullptr) return;
  const std::string session = ctx_.decode_cluster->session();
  const int main_tp = ctx_.cluster->plan().tp_size();
  for (moe::v1::KvTransferPlan& t : *plan->mutable_kv_transfers()) {
    t.set_session(session);
    // Every decode rank of the DP group keeps the whole latent (MLA) or, at an equal TP size,
    // the same KV heads as the main-group rank of its TP rank.
    const std::vector<std::string> ranks = ctx_.decode_cluster->KvAddresses(t.decode_dp_group());
    for (size_t j = 0; j < ranks.size(); ++j) {
      moe::v1::KvPeer* peer = t.add_peers();
      peer->set_address(ranks[j]);
      peer->set_source_tp_rank(static_cast<int>(j) % main_tp);
    }
  }
}

grpc::Status ClusterService::Register(grpc::ServerContext*, const moe::v1::RegisterRequest* request,
                                      moe::v1::RegisterResponse* response) {
  auto cluster = ForGroup(request->group());
  if (!cluster.ok()) return ToGrpc(cluster.status());
  auto r = (*cluster)->Register(*request, register_wait_);
  if (!r.ok()) return ToGrpc(r.status());
  *response = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status ClusterService::ReportReady(grpc::ServerContext*, const moe::v1::ReadyRequest* request,
                                         moe::v1::ReadyResponse*) {
  return ToGrpc(ForSession(request->session())->Ready(*request));
}

grpc::Status ClusterService::Heartbeat(grpc::ServerContext*,
                                       const moe::v1::HeartbeatRequest* request,
                                       moe::v1::HeartbeatResponse* response) {
  auto r = ForSession(request->session())->Heartbeat(*request);
  if (!r.ok()) return ToGrpc(r.status());
  response->set_shutdown(*r);
  return grpc::Status::OK;
}

grpc::Status ClusterService::Step(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<moe::v1::StepPlan, moe::v1::StepResult>* stream) {
  const auto md = context->client_metadata().find(kSessionMetadata);
  if (md == context->client_metadata().end()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no session metadata");
  }
  const std::string session(md->second.data(), md->second.size());
  Cluster* const cluster = ForSession(session);
  const WorkerGroup group =
      cluster == ctx_.decode_cluster ? WorkerGroup::kDecode : WorkerGroup::kMain;
  if (absl::Status s = cluster->AttachLeader(session, context); !s.ok()) return ToGrpc(s);
  struct Detach {
    Cluster* c;
    grpc::ServerContext* ctx;
    ~Detach() { c->DetachLeader(ctx); }
  } detach{cluster, context};
  MOE_LOG(INFO) << "leader attached (session " << session << ")";
  // The workers start from the plan's expert placement.
  if (group == WorkerGroup::kMain) ctx_.balancer->Reset();
  while (true) {
    const Cluster::Phase phase = cluster->phase();
    if (!cluster->IsCurrent(session)) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, cluster->Describe());
    }
    if (context->IsCancelled()) {  // the leader went away, between steps
      cluster->Fail("the leader's step stream broke");
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "step stream broke");
    }
    if (phase == Cluster::Phase::kLoading) {
      cluster->WaitFor(Cluster::Phase::kServing, absl::Milliseconds(100));
      continue;
    }
    if (phase == Cluster::Phase::kShuttingDown && ctx_.scheduler->idle()) {
      moe::v1::StepPlan bye;
      bye.set_shutdown(true);
      stream->Write(bye);
      MOE_LOG(INFO) << "workers told to shut down";
      return grpc::Status::OK;
    }
    std::optional<moe::v1::StepPlan> plan = ctx_.scheduler->NextStep(absl::Milliseconds(50), group);
    if (!plan) continue;
    int64_t tokens = 0;
    for (const auto& s : plan->sequences()) tokens += s.tokens_size();
    // A transfer's time grows with its positions, as a prefill's does: count them for the deadline.
    for (const auto& t : plan->kv_transfers()) tokens += t.tokens();
    AddKvPeers(&*plan);
    if (group == WorkerGroup::kMain && ctx_.balancer->MaybeRebalance(&*plan)) {
      ctx_.metrics->AddRebalance();
    }
    moe::v1::StepResult result;
    cluster->StepSent(plan->step(), tokens);
    if (!stream->Write(*plan) || !stream->Read(&result)) {
      cluster->Fail("the leader's step stream broke");  // unless the deadline failed it first
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "step stream broke");
    }
    if (!result.error().empty()) {
      cluster->Fail(absl::StrCat("a step failed on the workers: ", result.error()));
      return grpc::Status(grpc::StatusCode::INTERNAL, result.error());
    }
    cluster->StepDone(plan->step());
    ctx_.metrics->AddStep(tokens);
    ctx_.metrics->AddExpertTokens({result.expert_tokens().begin(), result.expert_tokens().end()},
                                  ctx_.config->n_routed_experts);
    ctx_.balancer->Observe(result.expert_tokens());
    ctx_.metrics->SetExpertImbalance(ctx_.balancer->imbalance());
    ctx_.scheduler->Complete(result, group);
  }
}

}  // namespace moe
