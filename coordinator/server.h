// The coordinator process without its flags: the scheduler, the cluster of workers, the gRPC
// services (moe.v1.Inference, moe.v1.Cluster, health, reflection) and the metrics endpoint,
// started together and drained together.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/model_config.h"
#include "common/tls_files.h"
#include "coordinator/api_keys.h"
#include "coordinator/cluster.h"
#include "coordinator/expert_balancer.h"
#include "coordinator/metrics.h"
#include "coordinator/openai_api.h"
#include "coordinator/scheduler.h"
#include "coordinator/services.h"

namespace grpc {
class Server;
}
namespace httplib {
class Server;
}

namespace moe {

struct CoordinatorOptions {
  std::string listen = "0.0.0.0:50051";  // the public API; port 0 picks one (see port())
  // The control plane (moe.v1.Cluster: workers register, heartbeat, run steps), on the cluster
  // network only, never on the public port; port 0 picks one (see cluster_port()).
  std::string cluster_listen = "127.0.0.1:50052";
  // Mutual TLS on the control plane: the coordinator's certificate and key, and the cluster CA
  // every worker's certificate must be signed by. None: plaintext.
  TlsFiles cluster_tls;
  int world = 1;
  int tp = 0;                 // 0: world
  // Prefill/decode disaggregation: a decode worker group of decode_world ranks (TP decode_tp, 0:
  // its world) beside the main group of `world` ranks, which then only prefills. 0: none.
  int decode_world = 0;
  int decode_tp = 0;
  int metrics_port = 0;       // 0: no metrics endpoint
  std::string metrics_host = "0.0.0.0";  // 127.0.0.1 keeps /metrics on loopback
  bool metrics_need_key = false;         // /metrics answers 401 without an API key
  int64_t kv_cache_mb = 256;  // per worker rank, float32
  int64_t kv_blocks = 0;      // overrides kv_cache_mb when > 0
  int64_t block_size = 64;
  int64_t max_step_tokens = 512;
  int64_t max_running = 256;
  int64_t max_queue = 1024;
  bool prefix_cache = true;  // --no-prefix-cache turns it off
  bool mtp = false;          // speculative decoding with the checkpoint's MTP layer
  int64_t mtp_draft_tokens = 1;  // tokens it drafts per step
  // EPLB (coordinator/expert_balancer.h): replicas beyond one per routed expert, and how often
  // (in steps) the experts move to the placement the last window_steps steps' loads call for.
  int64_t redundant_experts = 0;
  bool two_batch_overlap = false;   // the workers run each step as two overlapped micro-batches
  int64_t eplb_interval_steps = 0;  // 0: the initial placement stays
  int64_t eplb_window_steps = 0;    // 0: one interval
  // Request limits (INVALID_ARGUMENT naming the flag; a larger message: RESOURCE_EXHAUSTED).
  int64_t max_prompt_tokens = 0;           // 0: the context and the KV cache are the limits
  int64_t max_new_tokens = 0;              // the largest max_tokens; 0: the same
  int64_t max_request_bytes = 4ll << 20;   // of one gRPC message (gRPC's default)
  absl::Duration startup_timeout = absl::Seconds(600);
  absl::Duration heartbeat_timeout = absl::Seconds(10);
  StepDeadlineOptions step_deadline;  // a wedged rank: see coordinator/step_deadline.h
  // Keys of the public API (see coordinator/api_keys.h): from flags and the environment, and a
  // key file re-read by ReloadApiKeys(). None: the API is open.
  std::vector<std::string> api_keys;
  std::string api_key_file;
  // TLS on the public gRPC port (PEM files): with tls_client_ca, clients must present a
  // certificate it signed (mTLS). All empty: plaintext.
  std::string tls_cert, tls_key, tls_client_ca;
  // Where the tokenizer files are (usually the model folder); empty: token ids only.
  std::string tokenizer_dir;
  // The OpenAI-compatible HTTP API (coordinator/openai_api.h): HOST:PORT, empty for none.
  std::string http_listen;
  int http_threads = 64;   // concurrent HTTP requests (each stream holds one)
  std::string model_name;  // what HTTP clients pass as "model"
};

class CoordinatorServer {
 public:
  // Checks the options against the model, plans the shards and starts listening.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(
      const ModelConfig& config, const CoordinatorOptions& options);
  ~CoordinatorServer();

  int port() const { return port_; }
  int cluster_port() const { return cluster_port_; }
  int http_port() const { return http_port_; }
  // True while every worker (of every group) is ready.
  bool serving() const { return serving_.load(); }
  std::string Describe() const;
  // Reads the API key file again (SIGHUP); the number of keys in use now.
  absl::StatusOr<size_t> ReloadApiKeys() { return api_keys_->Reload(); }

  // Refuses new requests, lets in-flight ones finish for up to `timeout` (then ends them), has
  // the workers exit, and stops every server.
  void Drain(absl::Duration timeout);

 private:
  CoordinatorServer(const ModelConfig& config, const CoordinatorOptions& options,
                    const ShardPlan& plan, const std::optional<ShardPlan>& decode_plan,
                    int64_t kv_blocks, std::unique_ptr<ApiKeys> api_keys, ModelText text);
  absl::Status Listen();
  void OnPhase(WorkerGroup group, Cluster::Phase phase, const std::string& why);
  ServingContext Context() const;
  // Stops the heartbeat monitor, the gRPC server (in-flight calls get `grace`) and /metrics.
  void StopServing(absl::Duration grace);

  const ModelConfig config_;
  const CoordinatorOptions options_;
  Metrics metrics_;
  std::unique_ptr<ApiKeys> api_keys_;
  const ModelText text_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<ExpertBalancer> balancer_;
  std::unique_ptr<Cluster> cluster_;
  std::unique_ptr<Cluster> decode_cluster_;  // disaggregated: the decode group
  std::unique_ptr<InferenceService> inference_;
  std::unique_ptr<ClusterService> cluster_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> cluster_server_;
  int cluster_port_ = 0;
  std::unique_ptr<httplib::Server> http_;
  std::thread http_thread_;
  std::unique_ptr<OpenAiApi> openai_;
  std::unique_ptr<httplib::Server> api_http_;
  std::thread api_http_thread_;
  int http_port_ = 0;
  std::thread monitor_;  // heartbeats and step deadlines
  std::atomic<bool> serving_{false};
  std::atomic<bool> stop_monitor_{false};
  int port_ = 0;
  bool drained_ = false;
};

}  // namespace moe
