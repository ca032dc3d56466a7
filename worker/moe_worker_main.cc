// moe-worker: one rank of the serving engine. Registers with the coordinator, loads only its
// shard, joins the collective, then runs every step the coordinator plans (rank 0 holds the Step
// stream and broadcasts each plan to the other ranks).
//   mpirun -np W moe-worker --coordinator HOST:PORT --model DIR
//   moe-worker --coordinator HOST:PORT --model DIR --rank R --world-size W   (W processes, TCP)
//   ... --group decode   (the decode group of a disaggregated deployment: receives prompts' KV)
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/cli.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/cpu/ops.h"
#include "parallel/mpi_communicator.h"
#include "parallel/parallel_context.h"
#include "parallel/tcp_communicator.h"
#include "worker/engine.h"
#include "worker/kv_transfer.h"
#include "worker/step_runner.h"
#include "worker/worker_client.h"

namespace {

constexpr int kExitError = 1;
constexpr int kExitSessionLost = 3;

int Fail(const absl::Status& s) {
  MOE_LOG(ERROR) << s.message();
  return kExitError;
}

std::string Hostname() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

int DefaultThreads() {
  int local = 1;
  if (const char* v = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) local = std::max(1, std::atoi(v));
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / local);
}

// The leader's loop: plans from the coordinator, shared with every rank, results back.
int LeadSteps(moe::CoordinatorClient& client, const std::string& session, moe::StepRunner& runner) {
  grpc::ClientContext ctx;
  auto stream = client.OpenStepStream(&ctx, session);
  moe::v1::StepPlan plan;
  while (true) {
    bool lost = false;
    if (!stream->Read(&plan)) {
      // The coordinator ended the stream (failure elsewhere, or it went away): tell every rank.
      lost = true;
      plan.Clear();
      plan.set_shutdown(true);
    }
    if (absl::Status s = runner.SharePlan(&plan); !s.ok()) return Fail(s);
    if (plan.shutdown()) {
      const grpc::Status end = lost ? stream->Finish() : grpc::Status::OK;
      if (lost && !end.ok()) {
        MOE_LOG(ERROR) << "the coordinator's step stream ended (" << end.error_message()
                       << "): the session is lost, exiting for the launcher to restart";
        return kExitSessionLost;
      }
      MOE_LOG(INFO) << "shutdown requested by the coordinator";
      return 0;
    }
    auto out = runner.Run(plan);
    moe::v1::StepResult result;
    if (out.ok()) {
      result = std::move(*out);
    } else {
      result.set_step(plan.step());
      result.set_error(std::string(out.status().message()));
    }
    if (!stream->Write(result)) {
      MOE_LOG(ERROR) << "the coordinator's step stream broke while sending a result: the session "
                        "is lost, exiting for the launcher to restart";
      plan.Clear();
      plan.set_shutdown(true);
      (void)runner.SharePlan(&plan);
      return kExitSessionLost;
    }
    if (!out.ok()) return Fail(out.status());
  }
}

int FollowSteps(moe::StepRunner& runner) {
  moe::v1::StepPlan plan;
  while (true) {
    if (absl::Status s = runner.SharePlan(&plan); !s.ok()) return Fail(s);
    if (plan.shutdown()) return 0;
    if (auto out = runner.Run(plan); !out.ok()) return Fail(out.status());
  }
}

// This rank's place in the collective before registration: MPI's world when launched by
// mpirun, otherwise a TCP listener its peers will connect to (none for a single rank).
struct Collective {
  std::unique_ptr<moe::Communicator> world;  // set under MPI
  std::unique_ptr<moe::TcpListener> listener;
  std::string kind;     // "mpi" | "tcp"
  std::string address;  // the TCP listener's
};

absl::StatusOr<Collective> JoinCollective(int* argc, char*** argv, int64_t* rank,
                                          int64_t* world_size, const std::string& host,
                                          const std::string& listen) {
  Collective c;
  if (moe::MpiRuntime::LaunchedByMpi()) {
    MOE_RETURN_IF_ERROR(moe::MpiRuntime::Init(argc, argv));
    MOE_ASSIGN_OR_RETURN(c.world, moe::MakeMpiWorldCommunicator());
    if ((*rank >= 0 && *rank != c.world->rank()) ||
        (*world_size > 0 && *world_size != c.world->size())) {
      return absl::InvalidArgumentError("--rank/--world-size disagree with mpirun's");
    }
    *rank = c.world->rank();
    *world_size = c.world->size();
    c.kind = "mpi";
    return c;
  }
  if (*rank < 0 || *world_size < 1 || *rank >= *world_size) {
    return absl::InvalidArgumentError(
        "without mpirun, --rank R and --world-size W (0 <= R < W) are required");
  }
  c.kind = "tcp";
  if (*world_size > 1) {
    MOE_ASSIGN_OR_RETURN(c.listener,
                         moe::TcpListener::Listen(listen.empty() ? host + ":0" : listen));
    c.address = c.listener->address();
  }
  return c;
}

// The world communicator once the coordinator has told every rank its peers.
absl::StatusOr<std::unique_ptr<moe::Communicator>> ConnectWorld(
    Collective& c, int rank, int world_size, const moe::v1::RegisterResponse& assignment,
    const moe::MeshTls* tls) {
  if (c.world) return std::move(c.world);
  if (world_size == 1) return moe::MakeSelfCommunicator();
  const std::vector<std::string> peers(assignment.peer_addresses().begin(),
                                       assignment.peer_addresses().end());
  return moe::ConnectTcpMesh(rank, peers, *c.listener, absl::Seconds(60), tls);
}

// Loads this rank's shard, after checking that the coordinator planned the same shards from the
// same config.json.
absl::StatusOr<std::unique_ptr<moe::Engine>> LoadEngine(const std::string& model,
                                                        std::unique_ptr<moe::Communicator> world,
                                                        const moe::v1::RegisterResponse& assignment,
                                                        moe::Device device,
                                                        moe::WeightsAtLoad weights,
                                                        moe::Activations activations) {
  MOE_ASSIGN_OR_RETURN(const moe::ModelConfig config, moe::LoadModelConfig(model));
  MOE_ASSIGN_OR_RETURN(auto ctx,
                       moe::ParallelContext::Create(config, std::move(world), assignment.tp_size(),
                                                    assignment.redundant_experts()));
  const moe::RankShard& shard = ctx->shard();
  const auto& want = assignment.shard();
  if (shard.heads.begin != want.heads_begin() || shard.heads.end != want.heads_end() ||
      !std::equal(shard.experts.begin(), shard.experts.end(), want.experts().begin(),
                  want.experts().end())) {
    return absl::FailedPreconditionError(
        "the coordinator's shard assignment differs from this worker's plan: are both reading "
        "the same config.json?");
  }
  moe::EngineOptions opt;
  opt.block_size = assignment.kv_block_size();
  opt.kv_blocks = assignment.kv_blocks();
  opt.device = device;
  opt.weights = weights;
  opt.activations = activations;
  opt.mtp = assignment.mtp();
  opt.mtp_draft_tokens = std::max(1, assignment.mtp_draft_tokens());
  opt.two_batch_overlap = assignment.two_batch_overlap();
  opt.tokens_on_every_rank = false;  // the leader (world rank 0) reports them
  MOE_LOG(INFO) << "loading shard (dp " << shard.dp_rank << ", tp " << shard.tp_rank << ", "
                << shard.experts.size() << " experts/layer) from " << model;
  return moe::Engine::Load(model, std::move(ctx), opt);
}

// A decode-group rank's receiver of prompts' KV, and the address it is reached at: the listen
// address, or --host when it listens on every interface.
absl::StatusOr<std::unique_ptr<moe::KvTransferServer>> StartKvReceiver(
    moe::Engine& engine, const std::string& listen, const std::string& host,
    const std::string& session, const moe::TlsPem* tls, std::string* advertised) {
  if (engine.host_kv_cache() == nullptr) {
    return absl::UnimplementedError(
        "--group decode needs the CPU backend for now (the KV transfer reads and writes a cache "
        "in host memory)");
  }
  MOE_ASSIGN_OR_RETURN(auto server,
                       moe::KvTransferServer::Start(listen, engine.host_kv_cache(), session, tls));
  std::string listen_host = listen.substr(0, listen.rfind(':'));
  if (listen_host.empty() || listen_host == "0.0.0.0" || listen_host == "[::]") listen_host = host;
  *advertised = absl::StrCat(listen_host, ":", server->port());
  return server;
}

// The command line, its enumerations parsed.
struct CommandLine {
  std::string coordinator, model, host = Hostname(), device = "cpu", collective_listen;
  std::string weights_dtype = "stored", activations = "f32", group = "main",
              kv_listen = "0.0.0.0:0";
  int64_t rank = -1, world_size = 0, threads = 0, register_timeout_s = 600;
  int64_t heartbeat_ms = 1000, lost_after_s = 15;
  moe::TlsFiles cluster_tls;
  std::string cluster_tls_name;
  moe::Device backend = moe::Device::kCpu;
  moe::WeightsAtLoad weights = moe::WeightsAtLoad::kAsStored;
  moe::Activations rounding = moe::Activations::kF32;
};

absl::StatusOr<CommandLine> ParseCommandLine(int argc, char** argv) {
  CommandLine c;
  moe::FlagParser flags(
      "moe-worker",
      "One rank of the serving engine. Under mpirun (`mpirun -np W moe-worker ...`) ranks come\n"
      "from MPI; otherwise start W processes with --rank and --world-size (collectives over TCP,\n"
      "peers found through the coordinator). Exit codes: 0 shutdown, 1 error, 3 session lost.");
  flags.AddString("coordinator", &c.coordinator,
                  "The coordinator's control-plane address HOST:PORT (its --cluster-listen).",
                  true);
  flags.AddString("model", &c.model, "Checkpoint folder on this host.", true);
  flags.AddInt("rank", &c.rank, "This rank (without mpirun).");
  flags.AddInt("world-size", &c.world_size, "Ranks in the engine (without mpirun).");
  flags.AddString("host", &c.host, "Host name reported to the coordinator.");
  flags.AddString("device", &c.device,
                  "Backend: cpu, or cuda (one GPU per rank: device i of those "
                  "CUDA_VISIBLE_DEVICES shows for the host's i-th rank under mpirun, else 0; "
                  "several ranks exchange over NCCL).");
  flags.AddString("weights-dtype", &c.weights_dtype,
                  "CPU weights: stored (the checkpoint's format), f32 (converted at load: the "
                  "reference path), fp8 (float projections converted to 128x128-block fp8).");
  flags.AddString("activations", &c.activations, moe::kActivationsFlagHelp);
  flags.AddString("group", &c.group,
                  "The worker group this rank joins: main (receives the requests; with a decode "
                  "group it only prefills), or decode (the coordinator's --decode-world-size "
                  "ranks: decodes from the KV the main group sends).");
  flags.AddString(
      "kv-listen", &c.kv_listen,
      "--group decode: HOST:PORT where this rank receives prompts' KV (port 0: any; "
      "on 0.0.0.0 it is reached at --host). Mutual TLS with --cluster-cert (the certificate "
      "must then name that host).");
  flags.AddString("collective-listen", &c.collective_listen,
                  "Without mpirun: HOST:PORT where this rank accepts its peers (port 0: any).");
  flags.AddString("cluster-cert", &c.cluster_tls.cert,
                  "PEM certificate of this rank, signed by --cluster-ca: with it, the control "
                  "plane and the TCP mesh are mutual TLS (MPI's transport is not covered).");
  flags.AddString("cluster-key", &c.cluster_tls.key, "PEM private key of --cluster-cert.");
  flags.AddString("cluster-ca", &c.cluster_tls.ca,
                  "PEM CA of the cluster: the coordinator's and every peer's certificate must be "
                  "signed by it.");
  flags.AddString("cluster-tls-name", &c.cluster_tls_name,
                  "The name the coordinator's certificate carries (default: the host of "
                  "--coordinator).");
  flags.AddInt("threads", &c.threads, "CPU threads (0: the host's cores / ranks on it).");
  flags.AddInt("register-timeout-s", &c.register_timeout_s,
               "Give up if the coordinator does not complete registration within this time.");
  flags.AddInt("heartbeat-ms", &c.heartbeat_ms, "Heartbeat interval.");
  flags.AddInt("coordinator-lost-s", &c.lost_after_s,
               "Exit when the coordinator cannot be reached for this long.");
  flags.ParseOrExit(argc, argv);
  MOE_ASSIGN_OR_RETURN(c.backend, moe::ParseDevice(c.device));
  MOE_ASSIGN_OR_RETURN(c.weights, moe::ParseWeightsAtLoad(c.weights_dtype));
  MOE_ASSIGN_OR_RETURN(c.rounding, moe::ParseActivations(c.activations));
  if (c.group != "main" && c.group != "decode") {
    return absl::InvalidArgumentError(
        absl::StrCat("--group ", c.group, ": expected main or decode"));
  }
  return c;
}

// The cluster's TLS material: the PEM texts for the control plane and the KV transfer, and the TCP
// mesh's context (none under MPI, whose transport TLS does not cover).
struct ClusterTls {
  std::optional<moe::TlsPem> pem;
  std::unique_ptr<moe::MeshTls> mesh;
  const moe::TlsPem* pem_or_null() const { return pem ? &*pem : nullptr; }
};

absl::StatusOr<ClusterTls> LoadClusterTls(const moe::TlsFiles& files,
                                          const Collective& collective) {
  ClusterTls tls;
  if (!files.enabled()) return tls;
  MOE_ASSIGN_OR_RETURN(
      tls.pem, moe::ReadTlsFiles(files, {"--cluster-cert", "--cluster-key", "--cluster-ca"}));
  if (collective.kind == "tcp") {
    MOE_ASSIGN_OR_RETURN(tls.mesh, moe::MeshTls::Create(files));
  }
  return tls;
}

moe::v1::RegisterRequest RegistrationOf(const CommandLine& c, const Collective& collective) {
  moe::v1::RegisterRequest reg;
  reg.set_collective(collective.kind);
  reg.set_collective_address(collective.address);
  reg.set_rank(static_cast<int>(c.rank));
  reg.set_world_size(static_cast<int>(c.world_size));
  reg.set_host(c.host);
  reg.set_device(c.device);
  reg.set_pid(getpid());
  if (c.group == "decode") reg.set_group("decode");
  return reg;
}

// Heartbeats carrying the runner's progress; when the coordinator is lost (or cancels the session)
// the process exits at once, since other ranks may be blocked in a collective with this one: the
// launcher (mpirun, Kubernetes) sees the exit.
void StartHeartbeats(moe::CoordinatorClient& client, const std::string& session,
                     const CommandLine& c, const moe::StepProgress& progress) {
  client.StartHeartbeats(
      session, static_cast<int>(c.rank), absl::Milliseconds(c.heartbeat_ms),
      absl::Seconds(c.lost_after_s),
      [&progress](moe::v1::HeartbeatRequest* r) {
        r->set_last_step(progress.last_step);
        const int64_t current = progress.current_step;
        r->set_current_step(current);
        if (current > 0) {
          r->set_current_step_ms(absl::ToUnixMillis(absl::Now()) - progress.current_since_ms);
        }
      },
      [](const absl::Status& why) {
        MOE_LOG(WARNING) << why.message() << "; exiting";
        std::_Exit(why.code() == absl::StatusCode::kCancelled ? 0 : kExitSessionLost);
      });
}

}  // namespace

int main(int argc, char** argv) {
  auto command_line = ParseCommandLine(argc, argv);
  if (!command_line.ok()) return Fail(command_line.status());
  CommandLine& c = *command_line;
  auto collective =
      JoinCollective(&argc, &argv, &c.rank, &c.world_size, c.host, c.collective_listen);
  if (!collective.ok()) return Fail(collective.status());
  moe::SetLogPrefix(absl::StrCat("worker ", c.rank, "/", c.world_size));
  moe::cpu::SetNumThreads(c.threads > 0 ? static_cast<int>(c.threads) : DefaultThreads());
  auto tls = LoadClusterTls(c.cluster_tls, *collective);
  if (!tls.ok()) return Fail(tls.status());

  moe::CoordinatorClient client(c.coordinator, tls->pem_or_null(), c.cluster_tls_name);
  MOE_LOG(INFO) << "registering with " << c.coordinator;
  auto assignment =
      client.Register(RegistrationOf(c, *collective), absl::Seconds(c.register_timeout_s));
  if (!assignment.ok()) return Fail(assignment.status());
  const std::string session = assignment->session();
  auto world = ConnectWorld(*collective, static_cast<int>(c.rank), static_cast<int>(c.world_size),
                            *assignment, tls->mesh.get());
  if (!world.ok()) return Fail(world.status());
  if (tls->mesh) {
    MOE_LOG(INFO) << "TCP mesh joined: mutual TLS with the cluster CA " << c.cluster_tls.ca;
  }
  auto engine =
      LoadEngine(c.model, std::move(*world), *assignment, c.backend, c.weights, c.rounding);
  if (!engine.ok()) return Fail(engine.status());
  const moe::WeightBytes& wb = (*engine)->model().weight_bytes();
  MOE_LOG(INFO) << "loaded " << wb.Describe();

  std::unique_ptr<moe::KvTransferServer> kv_receiver;
  moe::v1::ReadyRequest ready;
  if (c.group == "decode") {
    std::string address;
    auto receiver =
        StartKvReceiver(**engine, c.kv_listen, c.host, session, tls->pem_or_null(), &address);
    if (!receiver.ok()) return Fail(receiver.status());
    kv_receiver = std::move(*receiver);
    ready.set_kv_address(address);
    MOE_LOG(INFO) << "decode group: receiving prompts' KV on " << address
                  << (tls->pem ? " (mutual TLS with the cluster CA)" : "");
  }
  ready.set_session(session);
  ready.set_rank(static_cast<int>(c.rank));
  ready.set_weight_bytes_read(static_cast<int64_t>(wb.total()));
  ready.set_weight_bytes_detail(wb.Describe());
  if (absl::Status s = client.ReportReady(ready); !s.ok()) return Fail(s);
  moe::StepRunner runner(**engine, kv_receiver.get(), tls->pem_or_null());
  StartHeartbeats(client, session, c, runner.progress());
  const int code = c.rank == 0 ? LeadSteps(client, session, runner) : FollowSteps(runner);
  client.StopHeartbeats();
  return code;
}
