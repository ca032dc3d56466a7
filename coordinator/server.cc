#include "coordinator/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <httplib.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/kv_layout.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/tls_files.h"

namespace moe {
namespace {

void SetReadiness(grpc::HealthCheckServiceInterface* health, bool serving) {
  health->SetServingStatus("", serving);
  health->SetServingStatus("moe.v1.Inference", serving);
}

// The public port's credentials: TLS (and mTLS with a client CA) from PEM files, or plaintext.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> PublicCredentials(
    const CoordinatorOptions& o) {
  if (o.tls_cert.empty() && o.tls_key.empty() && o.tls_client_ca.empty()) {
    return grpc::InsecureServerCredentials();
  }
  if (o.tls_cert.empty() || o.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key go together (and --tls-client-ca needs both)");
  }
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  MOE_ASSIGN_OR_RETURN(pair.cert_chain, ReadPemFile(o.tls_cert, "--tls-cert"));
  MOE_ASSIGN_OR_RETURN(pair.private_key, ReadPemFile(o.tls_key, "--tls-key"));
  ssl.pem_key_cert_pairs.push_back(pair);
  if (!o.tls_client_ca.empty()) {
    MOE_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPemFile(o.tls_client_ca, "--tls-client-ca"));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  MOE_LOG(INFO) << "public gRPC port: TLS"
                << (o.tls_client_ca.empty() ? "" : " with client certificates (mTLS)");
  return grpc::SslServerCredentials(ssl);
}

// The control plane's: mutual TLS with the cluster CA (every worker presents a certificate it
// signed), or plaintext.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ClusterCredentials(
    const CoordinatorOptions& o) {
  if (!o.cluster_tls.enabled()) return grpc::InsecureServerCredentials();
  MOE_ASSIGN_OR_RETURN(const TlsPem pem,
                       ReadTlsFiles(o.cluster_tls, {"--cluster-cert", "--cluster-key", "--cluster-ca"}));
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  ssl.pem_key_cert_pairs.push_back({pem.key, pem.cert});
  ssl.pem_root_certs = pem.ca;
  MOE_LOG(INFO) << "control plane: mutual TLS with the cluster CA " << o.cluster_tls.ca;
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    const ModelConfig& config, const CoordinatorOptions& o) {
  if (o.world < 1 || o.tp < 0 || o.kv_cache_mb < 1 || o.block_size < 1 || o.max_step_tokens < 1 ||
      o.max_running < 1 || o.max_queue < 0) {
    return absl::InvalidArgumentError("flags must be positive (see --help)");
  }
  if (o.max_prompt_tokens < 0 || o.max_new_tokens < 0 || o.max_request_bytes < 1024 ||
      o.max_request_bytes > (1ll << 30)) {
    return absl::InvalidArgumentError(
        "--max-prompt-tokens and --max-new-tokens must be >= 0, --max-request-bytes in [1 KiB, "
        "1 GiB]");
  }
  MOE_ASSIGN_OR_RETURN(ShardPlan plan, ShardPlan::Create(config, o.world, o.tp > 0 ? o.tp : o.world,
                                                         o.redundant_experts));
  std::optional<ShardPlan> decode_plan;
  if (o.decode_world < 0 || o.decode_tp < 0) {
    return absl::InvalidArgumentError("--decode-world-size and --decode-tp must be >= 0");
  }
  if (o.decode_world > 0) {
    MOE_ASSIGN_OR_RETURN(
        decode_plan,
        ShardPlan::Create(config, o.decode_world, o.decode_tp > 0 ? o.decode_tp : o.decode_world,
                          o.redundant_experts));
    if (KvLayout::For(config).window_groups() > 0) {
      return absl::InvalidArgumentError(
          "--decode-world-size: this model's window layer groups (sliding or chunked attention) "
          "keep several block tables a sequence, which the KV transfer does not carry yet");
    }
    // MLA's latent is whole on every TP rank; GQA's KV heads are split like the query heads.
    if (!config.is_mla() && decode_plan->tp_size() != plan.tp_size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--decode-tp ", decode_plan->tp_size(), " must equal --tp ", plan.tp_size(),
                       " for this model: its KV heads are split over the TP ranks"));
    }
    if (o.eplb_interval_steps > 0) {
      return absl::InvalidArgumentError(
          "--eplb-interval-steps with --decode-world-size: EPLB moves one worker group's experts; "
          "not yet both");
    }
    if (o.two_batch_overlap && decode_plan->tp_size() > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--two-batch-overlap needs --decode-tp 1 as well, not ", decode_plan->tp_size()));
    }
  }
  if (o.eplb_interval_steps < 0 || o.eplb_window_steps < 0) {
    return absl::InvalidArgumentError("--eplb-interval-steps and --eplb-window-steps must be >= 0");
  }
  if (o.two_batch_overlap && plan.tp_size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--two-batch-overlap needs --tp 1 (DP attention with expert parallelism), not ",
        plan.tp_size()));
  }
  if (o.mtp && config.num_nextn_predict_layers < 1) {
    return absl::InvalidArgumentError(
        "--mtp: the model has no MTP layer (config.json: num_nextn_predict_layers is 0)");
  }
  if (o.mtp_draft_tokens < 1 || o.mtp_draft_tokens > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("--mtp-draft-tokens must be in [1, 8], got ", o.mtp_draft_tokens));
  }
  // The workers' float32 cache: a block holds the layout's slots (every decoder layer, and the MTP
  // layer, unless window layer groups share the slots).
  const KvLayout layout = KvLayout::For(config, o.mtp ? 1 : 0);
  const int64_t per_block = layout.BlockBytes(config.kv_cache_dim(), o.block_size);
  const int64_t kv_blocks = o.kv_blocks > 0 ? o.kv_blocks : (o.kv_cache_mb << 20) / per_block;
  if (kv_blocks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv-cache-mb ", o.kv_cache_mb, " holds no block of ", per_block, " bytes"));
  }
  MOE_LOG(INFO) << config.model_type << ": " << (decode_plan ? "main (prefill) group " : "")
                << plan.Describe();
  if (decode_plan) {
    MOE_LOG(INFO) << "decode group " << decode_plan->Describe();
  }
  MOE_LOG(INFO) << "KV cache: " << kv_blocks << " blocks of " << o.block_size
                << " tokens per DP group";
  if (layout.window_groups() > 0) {
    MOE_LOG(INFO) << "KV cache: " << layout.window_groups()
                  << " window layer group(s) beside the full-attention layers; their blocks "
                     "go back as the window passes"
                  << (o.prefix_cache ? "; prefix caching is off for this model" : "");
  }
  MOE_ASSIGN_OR_RETURN(auto api_keys, ApiKeys::Create(o.api_keys, o.api_key_file));
  MOE_LOG(INFO) << "API keys: " << (api_keys->enabled() ? "required" : "off (the API is open)");
  std::unique_ptr<CoordinatorServer> server(
      new CoordinatorServer(config, o, plan, decode_plan, kv_blocks, std::move(api_keys),
                            ModelText::Load(config, o.tokenizer_dir)));
  MOE_RETURN_IF_ERROR(server->Listen());
  return server;
}

CoordinatorServer::CoordinatorServer(const ModelConfig& config, const CoordinatorOptions& o,
                                     const ShardPlan& plan,
                                     const std::optional<ShardPlan>& decode_plan, int64_t kv_blocks,
                                     std::unique_ptr<ApiKeys> api_keys, ModelText text)
    : config_(config), options_(o), api_keys_(std::move(api_keys)), text_(std::move(text)) {
  SchedulerOptions so;
  so.dp_groups = plan.dp_size();
  so.blocks_per_group = kv_blocks;
  so.block_size = o.block_size;
  so.max_step_tokens = o.max_step_tokens;
  so.max_running = o.max_running;
  so.max_waiting = o.max_queue;
  so.prefix_cache = o.prefix_cache;
  so.speculative = o.mtp;
  so.mtp_draft_tokens = static_cast<int>(o.mtp_draft_tokens);
  so.kv_layout = KvLayout::For(config, o.mtp ? 1 : 0);
  for (int64_t id : config_.eos_token_ids) so.eos_token_ids.push_back(static_cast<int32_t>(id));
  if (decode_plan) {
    so.decode_dp_groups = decode_plan->dp_size();
    so.decode_blocks_per_group = kv_blocks;
  }
  scheduler_ = std::make_unique<Scheduler>(so);
  ExpertBalancerOptions bo;
  bo.experts = config.n_routed_experts;
  bo.moe_layers = config.n_routed_experts > 0 ? config.num_moe_layers() : 0;
  bo.eplb.world = plan.world_size();
  bo.eplb.redundant = o.redundant_experts;
  bo.eplb.expert_groups = config.n_group;
  bo.interval_steps = o.eplb_interval_steps;
  bo.window_steps = o.eplb_window_steps;
  balancer_ = std::make_unique<ExpertBalancer>(bo, plan.experts());
  Cluster::Options co;
  co.kv_block_size = static_cast<int>(o.block_size);
  co.kv_blocks = kv_blocks;
  co.heartbeat_timeout = o.heartbeat_timeout;
  co.mtp = o.mtp;
  co.mtp_draft_tokens = static_cast<int>(o.mtp_draft_tokens);
  co.redundant_experts = o.redundant_experts;
  co.two_batch_overlap = o.two_batch_overlap;
  co.step_deadline = o.step_deadline;
  cluster_ =
      std::make_unique<Cluster>(plan, co, [this](Cluster::Phase phase, const std::string& why) {
        OnPhase(WorkerGroup::kMain, phase, why);
      });
  if (decode_plan) {
    co.group = "decode";
    decode_cluster_ = std::make_unique<Cluster>(
        *decode_plan, co, [this](Cluster::Phase phase, const std::string& why) {
          OnPhase(WorkerGroup::kDecode, phase, why);
        });
  }
  const RequestLimits limits{so.kv_layout.MostTokens(kv_blocks, o.max_step_tokens, o.block_size),
                             o.max_prompt_tokens, o.max_new_tokens};
  const ServingContext ctx{
      &config_,  cluster_.get(), decode_cluster_.get(),          scheduler_.get(), balancer_.get(),
      &metrics_, limits,         static_cast<int>(o.block_size), kv_blocks,        api_keys_.get(),
      &text_};
  inference_ = std::make_unique<InferenceService>(ctx);
  openai_ = std::make_unique<OpenAiApi>(ctx, o.model_name);
  cluster_service_ = std::make_unique<ClusterService>(ctx, o.startup_timeout);
}

void CoordinatorServer::OnPhase(WorkerGroup group, Cluster::Phase phase, const std::string& why) {
  const bool decode = group == WorkerGroup::kDecode;
  MOE_LOG(INFO) << (decode ? "decode group" : "cluster") << ": " << PhaseName(phase) << " (" << why
                << ")";
  // (A callback may come before the constructor has made the second group: not serving yet.)
  serving_ = cluster_ && (options_.decode_world == 0 || decode_cluster_) &&
             Serving(*cluster_, decode_cluster_.get());
  if (server_) SetReadiness(server_->GetHealthCheckService(), serving_);
  if (phase != Cluster::Phase::kFailed) return;
  // Without the decode group no request can end; without the main group the ones decoding can.
  const absl::Status failed = absl::UnavailableError(absl::StrCat(
      "a worker",
      options_.decode_world == 0 ? "" : (decode ? " of the decode group" : " of the main group"),
      " failed: ", why));
  if (options_.decode_world > 0 && !decode) {
    scheduler_->FailMainGroup(failed);
  } else {
    scheduler_->FailAll(failed);
  }
}

std::string CoordinatorServer::Describe() const {
  std::string why;
  Serving(*cluster_, decode_cluster_.get(), &why);
  return why;
}

absl::Status CoordinatorServer::Listen() {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  MOE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                       PublicCredentials(options_));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options_.listen, credentials, &port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options_.max_request_bytes));
  builder.RegisterService(inference_.get());
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0) return absl::UnavailableError("cannot listen on " + options_.listen);
  // gRPC's default health service starts with "" SERVING: say at once that it is not (yet), or a
  // readiness probe or client polling during the rest of startup sees SERVING with no workers.
  SetReadiness(server_->GetHealthCheckService(), serving_);
  // The control plane on its own listener: the public port answers UNIMPLEMENTED for it and its
  // reflection does not list it.
  MOE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> cluster_credentials,
                       ClusterCredentials(options_));
  grpc::ServerBuilder cluster_builder;
  cluster_builder.AddListeningPort(options_.cluster_listen, cluster_credentials, &cluster_port_);
  cluster_builder.SetMaxReceiveMessageSize(64 << 20);  // step results, from workers only
  cluster_builder.RegisterService(cluster_service_.get());
  cluster_server_ = cluster_builder.BuildAndStart();
  if (!cluster_server_ || cluster_port_ == 0) {
    return absl::UnavailableError("cannot listen on --cluster-listen " + options_.cluster_listen);
  }
  MOE_LOG(INFO) << "control plane (moe.v1.Cluster, for workers) on " << options_.cluster_listen
                << " port " << cluster_port_;
  // "liveness" answers SERVING while the process runs (for liveness probes); "" and the service
  // name answer SERVING only while every worker is ready (for readiness probes and clients).
  server_->GetHealthCheckService()->SetServingStatus("liveness", true);
  SetReadiness(server_->GetHealthCheckService(), serving_);
  MOE_LOG(INFO) << "listening on port " << port_ << " (gRPC), waiting for " << options_.world
                << " workers"
                << (options_.decode_world > 0
                        ? absl::StrCat(" and ", options_.decode_world, " decode-group workers")
                        : "");

  if (options_.metrics_port > 0) {
    http_ = std::make_unique<httplib::Server>();
    http_->Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
      if (options_.metrics_need_key && api_keys_->enabled()) {
        const std::string header = req.get_header_value("Authorization");
        if (!api_keys_->Allows(absl::string_view(header.data(), header.size()))) {
          res.status = 401;
          res.set_content("/metrics needs an API key: send Authorization: Bearer KEY\n",
                          "text/plain");
          return;
        }
      }
      const SchedulerStats st = scheduler_->Stats();
      const Metrics::Gauges g{st.waiting,
                              st.running,
                              st.blocks_used,
                              st.blocks_free,
                              st.preemptions,
                              serving_.load(),
                              st.prefix_cache.query_tokens,
                              st.prefix_cache.hit_tokens,
                              st.prefix_cache.cached_blocks,
                              st.prefix_cache.evictions,
                              st.drafts,
                              st.drafts_accepted,
                              st.kv_transfers,
                              st.kv_transfer_failures,
                              st.kv_transfer_bytes};
      res.set_content(metrics_.Render(g), "text/plain; version=0.0.4");
    });
    if (!http_->bind_to_port(options_.metrics_host, options_.metrics_port)) {
      return absl::UnavailableError(
          absl::StrCat("cannot listen on metrics port ", options_.metrics_port));
    }
    http_thread_ = std::thread([this] { http_->listen_after_bind(); });
    MOE_LOG(INFO) << "metrics on http://" << options_.metrics_host << ":" << options_.metrics_port
                  << "/metrics" << (options_.metrics_need_key ? " (API key required)" : "");
  }
  if (!options_.http_listen.empty()) {
    const size_t colon = options_.http_listen.rfind(':');
    int port = -1;
    if (colon == std::string::npos ||
        !absl::SimpleAtoi(options_.http_listen.substr(colon + 1), &port) || port < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--http-listen ", options_.http_listen, ": expected HOST:PORT"));
    }
    const std::string host = options_.http_listen.substr(0, colon);
    // With --tls-cert the HTTP API is HTTPS with the same certificate (and client CA: mTLS).
    if (!options_.tls_cert.empty()) {
      auto https = std::make_unique<httplib::SSLServer>(
          options_.tls_cert.c_str(), options_.tls_key.c_str(),
          options_.tls_client_ca.empty() ? nullptr : options_.tls_client_ca.c_str());
      if (!https->is_valid()) {
        return absl::InvalidArgumentError(
            "--http-listen with --tls-cert: the certificate, key or client CA cannot be used");
      }
      api_http_ = std::move(https);
    } else {
      api_http_ = std::make_unique<httplib::Server>();
    }
    const int threads = options_.http_threads;
    api_http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    api_http_->set_payload_max_length(static_cast<size_t>(options_.max_request_bytes));
    api_http_->set_tcp_nodelay(true);  // an SSE event is small: send it now, not after an ACK
    openai_->Register(api_http_.get());
    http_port_ = port == 0 ? api_http_->bind_to_any_port(host) : port;
    if (http_port_ <= 0 || (port != 0 && !api_http_->bind_to_port(host, port))) {
      return absl::UnavailableError(absl::StrCat("cannot listen on --http-listen ", options_.http_listen));
    }
    api_http_thread_ = std::thread([this] { api_http_->listen_after_bind(); });
    MOE_LOG(INFO) << "OpenAI-compatible HTTP API on " << (options_.tls_cert.empty() ? "http" : "https")
                  << "://" << host << ":" << http_port_
                  << "/v1 (model \"" << options_.model_name << "\")";
  }
  monitor_ = std::thread([this] {
    while (!stop_monitor_) {
      cluster_->Check();
      if (decode_cluster_) decode_cluster_->Check();
      absl::SleepFor(absl::Milliseconds(200));
    }
  });
  return absl::OkStatus();
}

void CoordinatorServer::Drain(absl::Duration timeout) {
  if (drained_) return;
  drained_ = true;
  cluster_->BeginShutdown();
  if (decode_cluster_) decode_cluster_->BeginShutdown();
  const absl::Time deadline = absl::Now() + timeout;
  while (!scheduler_->idle() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(50));
  if (!scheduler_->idle()) {
    MOE_LOG(WARNING) << "drain timeout: ending the remaining requests";
    scheduler_->FailAll(absl::UnavailableError("the server is shutting down"));
  }
  // The leader's loop sends the shutdown plan once idle; heartbeats then tell every rank.
  const absl::Time bye_deadline = absl::Now() + absl::Seconds(10);
  while ((cluster_->leader_attached() || (decode_cluster_ && decode_cluster_->leader_attached())) &&
         absl::Now() < bye_deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  cluster_->ReleaseWorkers();
  if (decode_cluster_) decode_cluster_->ReleaseWorkers();
  absl::SleepFor(absl::Seconds(2));  // a heartbeat interval or two for the workers to hear it
  StopServing(absl::Seconds(2));
}

void CoordinatorServer::StopServing(absl::Duration grace) {
  stop_monitor_ = true;
  if (monitor_.joinable()) monitor_.join();
  if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  if (cluster_server_) cluster_server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  if (http_thread_.joinable()) {
    http_->stop();
    http_thread_.join();
  }
  if (api_http_thread_.joinable()) {
    api_http_->stop();
    api_http_thread_.join();
  }
}

CoordinatorServer::~CoordinatorServer() { StopServing(absl::ZeroDuration()); }

}  // namespace moe
