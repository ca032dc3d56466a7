// moe-coordinator: the front end of the serving cluster (gRPC, and OpenAI-compatible HTTP). Reads
// config.json and the tokenizer files (never the weights), plans the
// shards, admits W workers, runs the continuous-batching scheduler, streams tokens to clients.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "common/cli.h"
#include "common/logging.h"
#include "coordinator/server.h"

namespace {

// Exit code when a second SIGTERM/SIGINT cuts the drain short.
constexpr int kExitInterrupted = 2;

int Fail(const absl::Status& s) {
  MOE_LOG(ERROR) << s.message();
  return 1;
}

// The command line: the server's options, and what only main uses.
struct CommandLine {
  moe::CoordinatorOptions options;
  std::string model;
  absl::Duration drain_timeout;
};

absl::StatusOr<CommandLine> ParseCommandLine(int argc, char** argv) {
  CommandLine c;
  moe::CoordinatorOptions& o = c.options;
  std::string& model = c.model;
  std::string api_key;
  int64_t world = o.world, tp = o.tp, metrics_port = o.metrics_port;
  int64_t decode_world = o.decode_world, decode_tp = o.decode_tp;
  int64_t startup_timeout_s = 600, heartbeat_timeout_s = 10, drain_timeout_s = 30;
  moe::FlagParser flags(
      "moe-coordinator",
      "The serving cluster's front end: moe.v1.Inference (streaming Generate, GetModelInfo),\n"
      "grpc.health.v1 and server reflection on --listen; the workers' control plane\n"
      "(moe.v1.Cluster) on --cluster-listen only; Prometheus metrics on --metrics-port.\n"
      "Waits for --world-size workers (moe-worker --coordinator <the --cluster-listen address>)\n"
      "to register and load their shards; SIGTERM\n"
      "drains in-flight requests, tells the workers to exit, and exits 0; a second SIGTERM\n"
      "during the drain exits at once with code 2.");
  flags.AddString("model", &model,
                  "Checkpoint folder (its config.json and tokenizer files are read; the weights "
                  "only by workers).",
                  true);
  flags.AddString("tls-cert", &o.tls_cert, "PEM certificate (chain) of the public gRPC port: TLS.");
  flags.AddString("tls-key", &o.tls_key, "PEM private key of --tls-cert.");
  flags.AddString("tls-client-ca", &o.tls_client_ca,
                  "PEM CA that must have signed every client's certificate (mTLS).");
  flags.AddString("cluster-cert", &o.cluster_tls.cert,
                  "PEM certificate of the control plane, signed by --cluster-ca: with it, the "
                  "control plane is mutual TLS.");
  flags.AddString("cluster-key", &o.cluster_tls.key, "PEM private key of --cluster-cert.");
  flags.AddString("cluster-ca", &o.cluster_tls.ca,
                  "PEM CA of the cluster: every worker must present a certificate it signed.");
  flags.AddString("http-listen", &o.http_listen,
                  "HOST:PORT of the OpenAI-compatible HTTP API (/v1/completions, /v1/models, "
                  "/health, /tokenize, /detokenize); empty: none.");
  int64_t http_threads = o.http_threads;
  flags.AddInt("http-threads", &http_threads,
               "HTTP requests served at once (a streaming request holds one until it ends).");
  flags.AddString("served-model-name", &o.model_name,
                  "The model name HTTP clients send (default: the model folder's name).");
  flags.AddString("tokenizer", &o.tokenizer_dir,
                  "Folder of the tokenizer files (tokenizer.json or tiktoken.model, and "
                  "tokenizer_config.json). Default: --model.");
  flags.AddInt("world-size", &world, "Worker ranks W.");
  flags.AddInt("tp", &tp, "Attention tensor-parallel size T (divides W; 0: W).");
  flags.AddInt(
      "decode-world-size", &decode_world,
      "Prefill/decode disaggregation: a decode worker group of this many ranks (moe-worker "
      "--group decode) beside the --world-size ranks, which then only prefill; each "
      "prompt's KV goes once to the decode group, which generates the rest. 0: none.");
  flags.AddInt("decode-tp", &decode_tp,
               "The decode group's attention TP size (divides --decode-world-size; 0: all of it).");
  flags.AddString("listen", &o.listen,
                  "Public gRPC address HOST:PORT (port 0 picks one; it is logged).");
  flags.AddString("cluster-listen", &o.cluster_listen,
                  "Control-plane address HOST:PORT for the workers, on the cluster network (never "
                  "the public one; port 0 picks one, logged).");
  flags.AddInt("metrics-port", &metrics_port, "HTTP port for /metrics (0: off).");
  flags.AddString("metrics-host", &o.metrics_host,
                  "Address /metrics binds (127.0.0.1: loopback only).");
  flags.AddBool("metrics-need-key", &o.metrics_need_key,
                "/metrics answers 401 without one of the API keys (when keys are configured).");
  flags.AddInt("kv-cache-mb", &o.kv_cache_mb, "KV cache per worker rank, in MB of float32.");
  flags.AddInt("kv-blocks", &o.kv_blocks,
               "KV cache blocks per worker rank, overriding --kv-cache-mb (0: use it).");
  flags.AddInt("block-size", &o.block_size, "Tokens per KV cache block.");
  flags.AddInt("max-batch-tokens", &o.max_step_tokens,
               "Tokens per step (prefill is chunked to it).");
  flags.AddInt("max-running", &o.max_running, "Sequences in the running batch.");
  flags.AddInt("max-queue", &o.max_queue, "Waiting requests beyond which new ones are refused.");
  bool no_prefix_cache = false;
  flags.AddBool("no-prefix-cache", &no_prefix_cache,
                "Compute every prompt in full (by default the KV blocks of prompt prefixes already "
                "computed are reused).");
  flags.AddBool("mtp", &o.mtp,
                "Speculative decoding with the checkpoint's MTP layer (DeepSeek-V3's "
                "num_nextn_predict_layers): the workers load it, and each decode step verifies "
                "its draft of the next token, so a step can give two tokens. Outputs keep their "
                "distribution (greedy: the same tokens). Not with logprobs (those requests are "
                "not speculated).");
  flags.AddInt("mtp-draft-tokens", &o.mtp_draft_tokens,
               "With --mtp: tokens drafted per step, the MTP layer applied again to its own output "
               "for each after the first (1 to 8; DeepSeek deploys 1).");
  flags.AddBool("two-batch-overlap", &o.two_batch_overlap,
                "The workers run each step as two micro-batches, one's MoE all-to-all "
                "overlapping the other's compute (CPU workers, --tp 1: DP attention + EP).");
  flags.AddInt("redundant-experts", &o.redundant_experts,
               "EPLB: extra replicas of routed experts (E + R must divide over the W ranks); each "
               "rank hosts (E + R) / W experts, a replicated expert's tokens split over its "
               "replicas.");
  flags.AddInt("eplb-interval-steps", &o.eplb_interval_steps,
               "EPLB: every this many steps, move each MoE layer's experts to the placement that "
               "balances the tokens the ranks saw over the last --eplb-window-steps (0: never; "
               "the placement stays the initial one).");
  flags.AddInt("eplb-window-steps", &o.eplb_window_steps,
               "EPLB: steps of routing counts a rebalance considers (0: one interval).");
  flags.AddInt("max-prompt-tokens", &o.max_prompt_tokens,
               "Longest prompt accepted, in tokens (0: the context and KV cache are the limits).");
  flags.AddInt("max-new-tokens", &o.max_new_tokens,
               "Largest max_tokens accepted (0: the context and KV cache are the limits).");
  flags.AddInt("max-request-bytes", &o.max_request_bytes,
               "Largest gRPC message accepted; larger ones get RESOURCE_EXHAUSTED.");
  flags.AddInt("startup-timeout-s", &startup_timeout_s,
               "Exit with an error if the workers are not all ready within this time.");
  flags.AddInt("heartbeat-timeout-s", &heartbeat_timeout_s,
               "A worker silent this long fails the cluster.");
  double step_deadline_min_s = absl::ToDoubleSeconds(o.step_deadline.min);
  double step_deadline_factor = o.step_deadline.factor;
  double first_steps_deadline_s = absl::ToDoubleSeconds(o.step_deadline.warmup);
  flags.AddDouble("step-deadline-factor", &step_deadline_factor,
                  "A step that runs longer than this many times its predicted time (the slowest "
                  "recent step's, scaled to its tokens) fails the cluster: a rank is wedged, though "
                  "its heartbeats go on. 0: steps have no deadline.");
  flags.AddDouble("step-deadline-min-s", &step_deadline_min_s, "No step's deadline is shorter.");
  flags.AddDouble("first-steps-deadline-s", &first_steps_deadline_s,
                  "The deadline of a worker group's first steps, before any is measured (the "
                  "weights are still being paged in).");
  flags.AddInt("drain-timeout-s", &drain_timeout_s,
               "On SIGTERM, how long in-flight requests may take to finish.");
  flags.AddString("api-key", &api_key,
                  "A key clients must send as `authorization: Bearer KEY` (also MOE_API_KEY). "
                  "Health and reflection stay open.");
  flags.AddString("api-key-file", &o.api_key_file,
                  "File of API keys, one a line (# comments); re-read on SIGHUP, so a key can be "
                  "revoked without a restart.");
  flags.ParseOrExit(argc, argv);
  o.prefix_cache = !no_prefix_cache;
  o.world = static_cast<int>(world);
  o.tp = static_cast<int>(tp);
  o.decode_world = static_cast<int>(decode_world);
  o.decode_tp = static_cast<int>(decode_tp);
  o.metrics_port = static_cast<int>(metrics_port);
  o.startup_timeout = absl::Seconds(startup_timeout_s);
  o.heartbeat_timeout = absl::Seconds(heartbeat_timeout_s);
  if (step_deadline_factor < 0 || step_deadline_min_s <= 0 || first_steps_deadline_s <= 0) {
    return absl::InvalidArgumentError(
        "--step-deadline-factor must be >= 0, --step-deadline-min-s and "
        "--first-steps-deadline-s > 0");
  }
  o.step_deadline.factor = step_deadline_factor;
  o.step_deadline.min = absl::Seconds(step_deadline_min_s);
  o.step_deadline.warmup = absl::Seconds(first_steps_deadline_s);
  o.api_keys = {api_key};
  if (const char* env = std::getenv("MOE_API_KEY")) o.api_keys.emplace_back(env);
  if (o.tokenizer_dir.empty()) o.tokenizer_dir = model;
  if (o.model_name.empty()) {  // "models/tiny-dsv3/" → "tiny-dsv3"
    std::filesystem::path p = std::filesystem::path(model).lexically_normal();
    o.model_name = (p.has_filename() ? p : p.parent_path()).filename().string();
  }
  if (http_threads < 1) return absl::InvalidArgumentError("--http-threads must be at least 1");
  o.http_threads = static_cast<int>(http_threads);
  c.drain_timeout = absl::Seconds(drain_timeout_s);
  return c;
}

// Waits for signals until the server has drained: SIGHUP reloads the API keys, SIGTERM or SIGINT
// drains in-flight requests (a second one exits at once). Fails the start-up if the workers are
// not all ready within the startup timeout. Returns the exit code.
int ServeUntilSignalled(moe::CoordinatorServer& server, const sigset_t& signals,
                        absl::Duration startup_timeout, absl::Duration drain_timeout) {
  const absl::Time startup_deadline = absl::Now() + startup_timeout;
  bool ever_served = false;
  while (true) {
    timespec tick{0, 200 * 1000 * 1000};
    const int sig = sigtimedwait(&signals, nullptr, &tick);
    if (sig == SIGHUP) {
      auto keys = server.ReloadApiKeys();
      if (keys.ok()) {
        MOE_LOG(INFO) << "SIGHUP: API keys reloaded, " << *keys << " in use";
      } else {
        MOE_LOG(ERROR) << "SIGHUP: keeping the API keys in use: " << keys.status().message();
      }
      continue;
    }
    if (sig == SIGTERM || sig == SIGINT) {
      MOE_LOG(INFO) << "signal " << sig << ": draining (a second signal exits at once)";
      std::atomic<bool> drained{false};
      std::thread drain([&] {
        server.Drain(drain_timeout);
        drained = true;
      });
      while (!drained) {
        timespec poll{0, 50 * 1000 * 1000};
        const int again = sigtimedwait(&signals, nullptr, &poll);
        if (again == SIGTERM || again == SIGINT) {
          MOE_LOG(WARNING) << "signal " << again << " during the drain: exiting now";
          std::_Exit(kExitInterrupted);
        }
      }
      drain.join();
      MOE_LOG(INFO) << "bye";
      return 0;
    }
    ever_served |= server.serving();
    if (!ever_served && absl::Now() > startup_deadline) {
      MOE_LOG(ERROR) << "workers not ready within " << absl::FormatDuration(startup_timeout) << ": "
                     << server.Describe();
      server.Drain(absl::ZeroDuration());
      return 1;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  moe::SetLogPrefix("coordinator");
  auto command_line = ParseCommandLine(argc, argv);
  if (!command_line.ok()) return Fail(command_line.status());
  // Signals go to a dedicated wait below, not to whichever thread happens to run.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A client that goes away mid-response must not end the process: with TLS the HTTP API writes
  // through OpenSSL, whose writes to a closed socket raise SIGPIPE.
  signal(SIGPIPE, SIG_IGN);

  auto config = moe::LoadModelConfig(command_line->model);
  if (!config.ok()) return Fail(config.status());
  auto server = moe::CoordinatorServer::Start(*config, command_line->options);
  if (!server.ok()) return Fail(server.status());
  return ServeUntilSignalled(**server, signals, command_line->options.startup_timeout,
                             command_line->drain_timeout);
}
