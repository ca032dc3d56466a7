#include "coordinator/services.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "coordinator/validation.h"

namespace moe {

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

namespace {

constexpr char kSessionMetadata[] = "x-moe-session";

std::string OutcomeOf(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
      return "finished";
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kDeadlineExceeded:
      return "cancelled";
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kResourceExhausted:
      return "rejected";
    case absl::StatusCode::kUnavailable:
      return "unavailable";
    default:
      return "failed";
  }
}

}  // namespace

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
  auto reject = [&](const absl::Status& s) {
    ctx_.metrics->RequestEnded(OutcomeOf(s));
    return ToGrpc(s);
  };
  if (ctx_.cluster->phase() != Cluster::Phase::kServing) {
    return reject(absl::UnavailableError(absl::StrCat("not serving: ", ctx_.cluster->Describe())));
  }
  uint64_t seed;
  {
    std::lock_guard<std::mutex> lock(seed_mu_);
    seed = seeds_();
  }
  moe::v1::GenerateRequest encoded;
  if (!request->prompt().empty()) {
    encoded = *request;
    if (absl::Status s = EncodePrompt(ctx_.tokenizer, ctx_.tokenizer_status, &encoded); !s.ok()) {
      return reject(s);
    }
  }
  auto params = ValidateRequest(request->prompt().empty() ? *request : encoded, *ctx_.config,
                                ctx_.limits, seed);
  if (!params.ok()) return reject(params.status());
  const int64_t prompt_tokens = static_cast<int64_t>(params->prompt.size());
  auto submitted = ctx_.scheduler->Submit(std::move(*params));
  if (!submitted.ok()) return reject(submitted.status());
  std::shared_ptr<Request> req = std::move(*submitted);
  ctx_.metrics->AddPromptTokens(prompt_tokens);

  // Response text, settled a whole character at a time.
  std::optional<text::StreamDecoder> decoder;
  if (ctx_.tokenizer != nullptr) {
    decoder.emplace(*ctx_.tokenizer,
                    !request->has_skip_special_tokens() || request->skip_special_tokens());
  }
  auto add_text = [&](const std::vector<int32_t>& ids, bool last,
                      moe::v1::GenerateResponse* resp) {
    if (!decoder) return;
    std::string text;
    for (int32_t id : ids) {
      if (auto piece = decoder->Push(id); piece.ok()) text += *piece;
    }
    if (last) text += decoder->Finish();
    resp->set_text(std::move(text));
  };

  absl::Time last = req->arrival();
  bool first = true;
  std::vector<int32_t> tokens;
  while (true) {
    tokens.clear();
    const bool ended = req->Wait(kCancellationCheck, &tokens);
    const absl::Time now = absl::Now();
    if (!tokens.empty()) {
      // Tokens that arrived together share the interval since the previous delivery.
      const double gap = absl::ToDoubleSeconds(now - last) / static_cast<double>(tokens.size());
      for (size_t i = 0; i < tokens.size(); ++i) {
        if (first) {
          ctx_.metrics->ObserveTimeToFirstToken(absl::ToDoubleSeconds(now - req->arrival()));
          first = false;
        } else {
          ctx_.metrics->ObserveInterTokenLatency(gap);
        }
      }
      ctx_.metrics->AddGenerationTokens(static_cast<int64_t>(tokens.size()));
      last = now;
    }
    const absl::Status status = ended ? req->status() : absl::OkStatus();
    if (ended && !status.ok()) {
      if (!tokens.empty()) {
        moe::v1::GenerateResponse partial;
        partial.mutable_token_ids()->Add(tokens.begin(), tokens.end());
        add_text(tokens, /*last=*/true, &partial);
        writer->Write(partial);
      }
      return reject(status);
    }
    if (!tokens.empty() || ended) {
      moe::v1::GenerateResponse resp;
      resp.mutable_token_ids()->Add(tokens.begin(), tokens.end());
      add_text(tokens, ended, &resp);
      if (ended) {
        resp.set_finish_reason(req->finish_reason());
        resp.mutable_usage()->set_prompt_tokens(static_cast<int32_t>(prompt_tokens));
        resp.mutable_usage()->set_completion_tokens(static_cast<int32_t>(req->produced()));
      }
      if (!writer->Write(resp)) {
        req->Cancel();
        ctx_.scheduler->Wake();
        return reject(absl::CancelledError("the client went away"));
      }
    }
    if (ended) {
      ctx_.metrics->RequestEnded("finished");
      return grpc::Status::OK;
    }
    if (context->IsCancelled()) {
      req->Cancel();
      ctx_.scheduler->Wake();
      return reject(absl::CancelledError("cancelled by the client (or its deadline passed)"));
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
  if (ctx_.tokenizer != nullptr) info->set_tokenizer(ctx_.tokenizer->source());
  return grpc::Status::OK;
}

grpc::Status ClusterService::Register(grpc::ServerContext*, const moe::v1::RegisterRequest* request,
                                      moe::v1::RegisterResponse* response) {
  auto r = ctx_.cluster->Register(*request, register_wait_);
  if (!r.ok()) return ToGrpc(r.status());
  *response = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status ClusterService::ReportReady(grpc::ServerContext*, const moe::v1::ReadyRequest* request,
                                         moe::v1::ReadyResponse*) {
  return ToGrpc(ctx_.cluster->Ready(*request));
}

grpc::Status ClusterService::Heartbeat(grpc::ServerContext*,
                                       const moe::v1::HeartbeatRequest* request,
                                       moe::v1::HeartbeatResponse* response) {
  auto r = ctx_.cluster->Heartbeat(*request);
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
  if (absl::Status s = ctx_.cluster->AttachLeader(session, context); !s.ok()) return ToGrpc(s);
  struct Detach {
    Cluster* c;
    grpc::ServerContext* ctx;
    ~Detach() { c->DetachLeader(ctx); }
  } detach{ctx_.cluster, context};
  MOE_LOG(INFO) << "leader attached (session " << session << ")";
  while (true) {
    const Cluster::Phase phase = ctx_.cluster->phase();
    if (!ctx_.cluster->IsCurrent(session) || context->IsCancelled()) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, ctx_.cluster->Describe());
    }
    if (phase == Cluster::Phase::kLoading) {
      ctx_.cluster->WaitFor(Cluster::Phase::kServing, absl::Milliseconds(100));
      continue;
    }
    if (phase == Cluster::Phase::kShuttingDown && ctx_.scheduler->idle()) {
      moe::v1::StepPlan bye;
      bye.set_shutdown(true);
      stream->Write(bye);
      MOE_LOG(INFO) << "workers told to shut down";
      return grpc::Status::OK;
    }
    std::optional<moe::v1::StepPlan> plan = ctx_.scheduler->NextStep(absl::Milliseconds(50));
    if (!plan) continue;
    moe::v1::StepResult result;
    if (!stream->Write(*plan) || !stream->Read(&result)) {
      ctx_.cluster->Fail("the leader's step stream broke");
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "step stream broke");
    }
    if (!result.error().empty()) {
      ctx_.cluster->Fail(absl::StrCat("a step failed on the workers: ", result.error()));
      return grpc::Status(grpc::StatusCode::INTERNAL, result.error());
    }
    int64_t tokens = 0;
    for (const auto& s : plan->sequences()) tokens += s.tokens_size();
    ctx_.metrics->AddStep(tokens);
    ctx_.metrics->AddExpertTokens({result.expert_tokens().begin(), result.expert_tokens().end()});
    ctx_.scheduler->Complete(result);
  }
}

}  // namespace moe
