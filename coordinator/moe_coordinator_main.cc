// moe-coordinator: the gRPC front end of the serving cluster. Reads only config.json, plans the
// shards, admits W workers, runs the continuous-batching scheduler, streams tokens to clients.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <httplib.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/cli.h"
#include "common/logging.h"
#include "coordinator/cluster.h"
#include "coordinator/metrics.h"
#include "coordinator/scheduler.h"
#include "coordinator/services.h"

namespace {

int Fail(const absl::Status& s) {
  MOE_LOG(ERROR) << s.message();
  return 1;
}

void SetReadiness(grpc::HealthCheckServiceInterface* health, bool serving) {
  health->SetServingStatus("", serving);
  health->SetServingStatus("moe.v1.Inference", serving);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, listen = "0.0.0.0:50051";
  int64_t world = 1, tp = 0, metrics_port = 0, kv_mb = 256, kv_blocks_flag = 0, block_size = 64;
  int64_t max_step_tokens = 512, max_running = 256, max_queue = 1024;
  int64_t startup_timeout_s = 600, heartbeat_timeout_s = 10, drain_timeout_s = 30;
  moe::FlagParser flags(
      "moe-coordinator",
      "The serving cluster's front end: moe.v1.Inference (streaming Generate, GetModelInfo),\n"
      "grpc.health.v1 and server reflection on --listen; Prometheus metrics on --metrics-port.\n"
      "Waits for --world-size workers (moe-worker) to register and load their shards; SIGTERM\n"
      "drains in-flight requests, tells the workers to exit, and exits 0.");
  flags.AddString("model", &model, "Checkpoint folder (only its config.json is read).", true);
  flags.AddInt("world-size", &world, "Worker ranks W.");
  flags.AddInt("tp", &tp, "Attention tensor-parallel size T (divides W; 0: W).");
  flags.AddString("listen", &listen, "gRPC address HOST:PORT (port 0 picks one; it is logged).");
  flags.AddInt("metrics-port", &metrics_port, "HTTP port for /metrics (0: off).");
  flags.AddInt("kv-cache-mb", &kv_mb, "KV cache per worker rank, in MB of float32.");
  flags.AddInt("kv-blocks", &kv_blocks_flag,
               "KV cache blocks per worker rank, overriding --kv-cache-mb (0: use it).");
  flags.AddInt("block-size", &block_size, "Tokens per KV cache block.");
  flags.AddInt("max-batch-tokens", &max_step_tokens, "Tokens per step (prefill is chunked to it).");
  flags.AddInt("max-running", &max_running, "Sequences in the running batch.");
  flags.AddInt("max-queue", &max_queue, "Waiting requests beyond which new ones are refused.");
  flags.AddInt("startup-timeout-s", &startup_timeout_s,
               "Exit with an error if the workers are not all ready within this time.");
  flags.AddInt("heartbeat-timeout-s", &heartbeat_timeout_s,
               "A worker silent this long fails the cluster.");
  flags.AddInt("drain-timeout-s", &drain_timeout_s,
               "On SIGTERM, how long in-flight requests may take to finish.");
  flags.ParseOrExit(argc, argv);
  moe::SetLogPrefix("coordinator");

  // Signals go to a dedicated wait below, not to whichever thread happens to run.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto config = moe::LoadModelConfig(model);
  if (!config.ok()) return Fail(config.status());
  if (world < 1 || tp < 0 || kv_mb < 1 || block_size < 1 || max_step_tokens < 1 ||
      max_running < 1 || max_queue < 0) {
    return Fail(absl::InvalidArgumentError("flags must be positive (see --help)"));
  }
  auto plan = moe::ShardPlan::Create(*config, static_cast<int>(world),
                                     tp > 0 ? static_cast<int>(tp) : static_cast<int>(world));
  if (!plan.ok()) return Fail(plan.status());
  const int64_t per_block = config->LatentKvBytesPerToken(sizeof(float)) * block_size;
  const int64_t kv_blocks = kv_blocks_flag > 0 ? kv_blocks_flag : (kv_mb << 20) / per_block;
  if (kv_blocks < 1) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--kv-cache-mb ", kv_mb, " holds no block of ", per_block, " bytes")));
  }
  MOE_LOG(INFO) << config->model_type << ": " << plan->Describe();
  MOE_LOG(INFO) << "KV cache: " << kv_blocks << " blocks of " << block_size
                << " tokens per DP group";

  moe::Metrics metrics;
  moe::SchedulerOptions so;
  so.dp_groups = plan->dp_size();
  so.blocks_per_group = kv_blocks;
  so.block_size = block_size;
  so.max_step_tokens = max_step_tokens;
  so.max_running = max_running;
  so.max_waiting = max_queue;
  for (int64_t id : config->eos_token_ids) so.eos_token_ids.push_back(static_cast<int32_t>(id));
  moe::Scheduler scheduler(so);

  std::unique_ptr<grpc::Server> server;
  std::atomic<bool> serving{false};
  moe::Cluster::Options co;
  co.kv_block_size = static_cast<int>(block_size);
  co.kv_blocks = kv_blocks;
  co.heartbeat_timeout = absl::Seconds(heartbeat_timeout_s);
  moe::Cluster cluster(*plan, co, [&](moe::Cluster::Phase phase, const std::string& why) {
    MOE_LOG(INFO) << "cluster: " << moe::PhaseName(phase) << " (" << why << ")";
    serving = phase == moe::Cluster::Phase::kServing;
    if (server) SetReadiness(server->GetHealthCheckService(), serving);
    if (phase == moe::Cluster::Phase::kFailed) {
      scheduler.FailAll(absl::UnavailableError(absl::StrCat("a worker failed: ", why)));
    }
  });

  moe::ServingContext ctx{&*config,
                          &cluster,
                          &scheduler,
                          &metrics,
                          kv_blocks * block_size,
                          static_cast<int>(block_size),
                          kv_blocks};
  moe::InferenceService inference(ctx);
  moe::ClusterService cluster_service(ctx, absl::Seconds(startup_timeout_s));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&inference);
  builder.RegisterService(&cluster_service);
  server = builder.BuildAndStart();
  if (!server || port == 0) return Fail(absl::UnavailableError("cannot listen on " + listen));
  // "liveness" answers SERVING while the process runs (for liveness probes); "" and the service
  // name answer SERVING only while every worker is ready (for readiness probes and clients).
  server->GetHealthCheckService()->SetServingStatus("liveness", true);
  SetReadiness(server->GetHealthCheckService(), serving);
  MOE_LOG(INFO) << "listening on port " << port << " (gRPC), waiting for " << world << " workers";

  httplib::Server http;
  std::thread http_thread;
  if (metrics_port > 0) {
    http.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
      const moe::SchedulerStats st = scheduler.Stats();
      moe::Metrics::Gauges g{st.waiting,     st.running,     st.blocks_used,
                             st.blocks_free, st.preemptions, serving.load()};
      res.set_content(metrics.Render(g), "text/plain; version=0.0.4");
    });
    if (!http.bind_to_port("0.0.0.0", static_cast<int>(metrics_port))) {
      return Fail(
          absl::UnavailableError(absl::StrCat("cannot listen on metrics port ", metrics_port)));
    }
    http_thread = std::thread([&] { http.listen_after_bind(); });
    MOE_LOG(INFO) << "metrics on http://0.0.0.0:" << metrics_port << "/metrics";
  }

  std::atomic<bool> stop_monitor{false};
  std::thread monitor([&] {
    while (!stop_monitor) {
      cluster.CheckHeartbeats();
      absl::SleepFor(absl::Milliseconds(200));
    }
  });

  // Wait for a signal, failing the start-up if the workers are not ready in time.
  const absl::Time startup_deadline = absl::Now() + absl::Seconds(startup_timeout_s);
  bool ever_served = false;
  int exit_code = 0;
  while (true) {
    timespec tick{0, 200 * 1000 * 1000};
    const int sig = sigtimedwait(&signals, nullptr, &tick);
    if (sig == SIGTERM || sig == SIGINT) {
      MOE_LOG(INFO) << "signal " << sig << ": draining";
      break;
    }
    ever_served |= serving.load();
    if (!ever_served && absl::Now() > startup_deadline) {
      MOE_LOG(ERROR) << "workers not ready within " << startup_timeout_s
                     << " s: " << cluster.Describe();
      exit_code = 1;
      break;
    }
  }

  // Drain: refuse new work, let in-flight requests finish (bounded), then end the rest.
  cluster.BeginShutdown();
  const absl::Time drain_deadline = absl::Now() + absl::Seconds(drain_timeout_s);
  while (!scheduler.idle() && absl::Now() < drain_deadline && exit_code == 0) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  if (!scheduler.idle()) {
    MOE_LOG(WARNING) << "drain timeout: ending the remaining requests";
    scheduler.FailAll(absl::UnavailableError("the server is shutting down"));
  }
  // The leader's loop sends the shutdown plan once idle; heartbeats then tell every rank.
  const absl::Time bye_deadline = absl::Now() + absl::Seconds(10);
  while (cluster.leader_attached() && absl::Now() < bye_deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  cluster.ReleaseWorkers();
  absl::SleepFor(absl::Seconds(2));  // a heartbeat interval or two for the workers to hear it
  stop_monitor = true;
  monitor.join();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (http_thread.joinable()) {
    http.stop();
    http_thread.join();
  }
  MOE_LOG(INFO) << "bye";
  return exit_code;
}
