// The served system as users run it: moe-coordinator and moe-worker processes on loopback ports,
// clients over gRPC. Greedy outputs are checked against the engine run alone (the code path of
// moe-generate, itself checked against HF transformers).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "moe/v1/cluster.grpc.pb.h"
#include "moe/v1/inference.grpc.pb.h"
#include "tests/integration/process.h"
#include "tests/test_util.h"
#include "common/tls_files.h"
#include "text/tokenizer_files.h"
#include "text/utf8.h"
#include "tools/model_maker.h"
#include "worker/engine.h"
#include "worker/generator.h"

namespace moe {
namespace {

using ::moe::testing::BinaryPath;
using ::moe::testing::FreePort;
using ::moe::testing::Process;
using ::moe::testing::ScratchDir;
using ::testing::HasSubstr;
using ::testing::Not;

struct ClusterOptions {
  int world = 2;
  int tp = 1;
  bool mpirun = true;  // else W processes with --rank/--world-size (TCP collectives)
  // With --decode-world-size N among them, StartWorkers launches a decode group of N ranks too.
  std::vector<std::string> coordinator_flags;
};

// The value after `flag` in `flags`, or 0.
int FlagValue(const std::vector<std::string>& flags, const std::string& flag) {
  const auto it = std::find(flags.begin(), flags.end(), flag);
  return it == flags.end() || it + 1 == flags.end() ? 0 : std::stoi(*(it + 1));
}

class ServingCluster {
 public:
  ServingCluster(const std::string& model, const ClusterOptions& o, const std::string& dir)
      : model_(model), o_(o), dir_(dir) {
    const int port = FreePort();
    metrics_port_ = FreePort();
    address_ = absl::StrCat("127.0.0.1:", port);
    cluster_address_ = absl::StrCat("127.0.0.1:", FreePort());
    std::vector<std::string> argv = {BinaryPath("coordinator/moe-coordinator"),
                                     "--model",
                                     model,
                                     "--world-size",
                                     std::to_string(o.world),
                                     "--tp",
                                     std::to_string(o.tp),
                                     "--listen",
                                     address_,
                                     "--cluster-listen",
                                     cluster_address_,
                                     "--metrics-port",
                                     std::to_string(metrics_port_),
                                     "--heartbeat-timeout-s",
                                     "10"};
    argv.insert(argv.end(), o.coordinator_flags.begin(), o.coordinator_flags.end());
    coordinator_ = std::make_unique<Process>(argv, dir + "/coordinator.log");
    channel_ = grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
    stub_ = moe::v1::Inference::NewStub(channel_);
    health_ = grpc::health::v1::Health::NewStub(channel_);
  }

  // Extra flags for every worker StartWorkers launches.
  void AddWorkerFlags(const std::vector<std::string>& flags) {
    worker_flags_.insert(worker_flags_.end(), flags.begin(), flags.end());
  }

  // The main group's workers, then the decode group's (when the coordinator has one).
  void StartWorkers() {
    StartMainGroup();
    const int decode = FlagValue(o_.coordinator_flags, "--decode-world-size");
    if (decode > 0) StartDecodeGroup();
  }
  void StartMainGroup() { StartGroup(o_.world, {}, ""); }
  void StartDecodeGroup() {
    StartGroup(FlagValue(o_.coordinator_flags, "--decode-world-size"),
               {"--group", "decode", "--kv-listen", "127.0.0.1:0"}, "decode-");
  }

  grpc::health::v1::HealthCheckResponse::ServingStatus Health() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    grpc::health::v1::HealthCheckResponse resp;
    if (!health_->Check(&ctx, {}, &resp).ok())
      return grpc::health::v1::HealthCheckResponse::UNKNOWN;
    return resp.status();
  }

  bool WaitServing(absl::Duration timeout = absl::Seconds(60)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (Health() == grpc::health::v1::HealthCheckResponse::SERVING) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

  std::string Metrics() {
    httplib::Client c("127.0.0.1", metrics_port_);
    auto res = c.Get("/metrics");
    return res ? res->body : "";
  }
  // The HTTP status of GET /metrics with this Authorization header ("" for none).
  int MetricsStatus(const std::string& authorization) {
    httplib::Client c("127.0.0.1", metrics_port_);
    httplib::Headers headers;
    if (!authorization.empty()) headers.emplace("Authorization", authorization);
    auto res = c.Get("/metrics", headers);
    return res ? res->status : -1;
  }
  // The value of the series `line_prefix` (e.g. "moe_kv_blocks_used").
  double Metric(const std::string& series) {
    for (absl::string_view line : absl::StrSplit(Metrics(), '\n')) {
      if (absl::StartsWith(line, series + " ")) {
        double v = -1;
        (void)absl::SimpleAtod(line.substr(series.size() + 1), &v);
        return v;
      }
    }
    return -1;
  }

  moe::v1::Inference::Stub& stub() { return *stub_; }
  const std::string& address() const { return address_; }
  const std::string& cluster_address() const { return cluster_address_; }
  Process& coordinator() { return *coordinator_; }
  std::vector<std::unique_ptr<Process>>& workers() { return workers_; }
  std::string Logs() {
    std::string s = "--- coordinator\n" + coordinator_->Log();
    for (auto& w : workers_) s += "--- worker\n" + w->Log();
    return s;
  }

 private:
  void StartGroup(int world, const std::vector<std::string>& group_flags, const std::string& name) {
    const std::string worker = BinaryPath("worker/moe-worker");
    if (o_.mpirun) {
      std::vector<std::string> argv = {"mpirun",
                                       "--oversubscribe",
                                       "-np",
                                       std::to_string(world),
                                       worker,
                                       "--coordinator",
                                       cluster_address_,
                                       "--model",
                                       model_,
                                       "--heartbeat-ms",
                                       "300"};
      argv.insert(argv.end(), group_flags.begin(), group_flags.end());
      argv.insert(argv.end(), worker_flags_.begin(), worker_flags_.end());
      workers_.push_back(std::make_unique<Process>(argv, dir_ + "/" + name + "workers.log"));
      return;
    }
    for (int r = 0; r < world; ++r) {
      std::vector<std::string> argv = {worker,
                                       "--coordinator",
                                       cluster_address_,
                                       "--model",
                                       model_,
                                       "--rank",
                                       std::to_string(r),
                                       "--world-size",
                                       std::to_string(world),
                                       "--host",
                                       "127.0.0.1",
                                       "--threads",
                                       "1",
                                       "--heartbeat-ms",
                                       "300"};
      argv.insert(argv.end(), group_flags.begin(), group_flags.end());
      argv.insert(argv.end(), worker_flags_.begin(), worker_flags_.end());
      workers_.push_back(
          std::make_unique<Process>(argv, absl::StrCat(dir_, "/", name, "worker", r, ".log")));
    }
  }

  std::string model_;
  ClusterOptions o_;
  std::string dir_, address_, cluster_address_;
  std::vector<std::string> worker_flags_;
  int metrics_port_ = 0;
  std::unique_ptr<Process> coordinator_;
  std::vector<std::unique_ptr<Process>> workers_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<moe::v1::Inference::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

struct Outcome {
  grpc::Status status;
  std::vector<int32_t> tokens;
  std::string text;                 // the messages' text, concatenated
  bool every_chunk_utf8 = true;     // no message's text cut a character
  int prompt_tokens = -1;
  moe::v1::FinishReason reason = moe::v1::FINISH_REASON_UNSPECIFIED;
  int completion_tokens = -1;
  std::vector<moe::v1::TokenLogprobs> logprobs;
};

Outcome Generate(moe::v1::Inference::Stub& stub, const moe::v1::GenerateRequest& req,
                 absl::Duration deadline = absl::Seconds(120), int cancel_after = -1,
                 const std::string& authorization = "") {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  if (!authorization.empty()) ctx.AddMetadata("authorization", authorization);
  auto reader = stub.Generate(&ctx, req);
  Outcome out;
  moe::v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    out.tokens.insert(out.tokens.end(), resp.token_ids().begin(), resp.token_ids().end());
    out.text += resp.text();
    out.logprobs.insert(out.logprobs.end(), resp.logprobs().begin(), resp.logprobs().end());
    out.every_chunk_utf8 = out.every_chunk_utf8 && text::LossyUtf8(resp.text()) == resp.text();
    if (resp.finish_reason() != moe::v1::FINISH_REASON_UNSPECIFIED) {
      out.reason = resp.finish_reason();
      out.completion_tokens = resp.usage().completion_tokens();
      out.prompt_tokens = resp.usage().prompt_tokens();
    }
    if (cancel_after >= 0 && static_cast<int>(out.tokens.size()) >= cancel_after) ctx.TryCancel();
  }
  out.status = reader->Finish();
  return out;
}

moe::v1::GenerateRequest Request(const std::vector<int32_t>& prompt, int max_tokens) {
  moe::v1::GenerateRequest r;
  r.mutable_prompt_ids()->Add(prompt.begin(), prompt.end());
  r.set_max_tokens(max_tokens);
  r.set_ignore_eos(true);
  r.mutable_sampling()->set_temperature(0.0f);
  return r;
}

// The engine alone's log-probabilities of `tokens` and of the `top` most likely tokens at each
// position: log-softmax of its logits, in double, written out here.
std::vector<moe::v1::TokenLogprobs> ReferenceLogprobs(Engine& engine, const std::vector<int32_t>& prompt,
                                                      int max_tokens, int top) {
  BlockAllocator alloc(engine.num_blocks());
  GenerateOptions g;
  g.max_new_tokens = max_tokens;
  auto out = GenerateGreedy(engine, alloc, prompt, g);
  EXPECT_TRUE(out.ok());
  std::vector<moe::v1::TokenLogprobs> lps;
  const int64_t vocab = out->logits.shape()[1];
  for (size_t k = 0; k < out->tokens.size(); ++k) {
    const float* row = out->logits.row(static_cast<int64_t>(k));
    double z = 0, m = *std::max_element(row, row + vocab);
    for (int64_t v = 0; v < vocab; ++v) z += std::exp(row[v] - m);
    const double lse = m + std::log(z);
    std::vector<int32_t> order(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
    moe::v1::TokenLogprobs lp;
    lp.set_logprob(static_cast<float>(row[out->tokens[k]] - lse));
    for (int j = 0; j < top; ++j) {
      lp.add_top_ids(order[static_cast<size_t>(j)]);
      lp.add_top_logprobs(static_cast<float>(row[order[static_cast<size_t>(j)]] - lse));
    }
    lps.push_back(lp);
  }
  return lps;
}

void ExpectLogprobsNear(const std::vector<moe::v1::TokenLogprobs>& got,
                        const std::vector<moe::v1::TokenLogprobs>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t k = 0; k < got.size(); ++k) {
    SCOPED_TRACE(absl::StrCat("token ", k));
    EXPECT_NEAR(got[k].logprob(), want[k].logprob(), 1e-4);
    ASSERT_EQ(got[k].top_ids_size(), want[k].top_ids_size());
    for (int j = 0; j < got[k].top_ids_size(); ++j) {
      EXPECT_EQ(got[k].top_ids(j), want[k].top_ids(j));
      EXPECT_NEAR(got[k].top_logprobs(j), want[k].top_logprobs(j), 1e-4);
    }
  }
}

// What moe-generate prints for this request (the engine alone, greedy, EOS ignored).
std::vector<int32_t> ReferenceTokens(Engine& engine, const std::vector<int32_t>& prompt,
                                     int max_tokens) {
  BlockAllocator alloc(engine.num_blocks());
  GenerateOptions g;
  g.max_new_tokens = max_tokens;
  auto out = GenerateGreedy(engine, alloc, prompt, g);
  EXPECT_TRUE(out.ok());
  return out->tokens;
}

// A checkpoint written here and its one-rank engine, the reference for the served outputs.
struct ServedModel {
  std::string dir;
  std::unique_ptr<Engine> engine;
};

ServedModel MakeServedModel(const ScratchDir& scratch, const std::string& preset, WeightDType dtype,
                            uint64_t seed, double router_skew = 0) {
  MakeModelOptions opt;
  opt.out_dir = scratch.file(preset + "-" + std::to_string(static_cast<int>(dtype)) +
                             (router_skew > 0 ? "-skewed" : ""));
  opt.seed = seed;
  opt.dtype = dtype;
  opt.router_skew = router_skew;
  EXPECT_TRUE(WriteCheckpoint(*PresetConfig(preset), opt).ok());
  auto config = LoadModelConfig(opt.out_dir);
  EngineOptions eo;
  eo.block_size = 16;
  eo.kv_blocks = 256;
  auto e = Engine::Load(opt.out_dir, ParallelContext::Single(*config), eo);
  EXPECT_TRUE(e.ok()) << e.status();
  return {opt.out_dir, e.ok() ? std::move(*e) : nullptr};
}

class ServingTest : public ::testing::Test {
 public:
  static void SetUpTestSuite() {
    signal(SIGPIPE, SIG_IGN);  // the HTTPS clients write through OpenSSL to sockets that close
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
    cpu::SetNumThreads(1);
    dir_ = new ScratchDir();
    MakeModelOptions opt;
    opt.out_dir = dir_->file("tiny-dsv3");
    opt.seed = 41;
    opt.dtype = WeightDType::kF32;
    ASSERT_TRUE(WriteCheckpoint(*PresetConfig("tiny-dsv3"), opt).ok());
    auto config = LoadModelConfig(opt.out_dir);
    EngineOptions eo;
    eo.block_size = 16;
    eo.kv_blocks = 256;
    auto e = Engine::Load(opt.out_dir, ParallelContext::Single(*config), eo);
    ASSERT_TRUE(e.ok());
    engine_ = e->release();
  }
  static void TearDownTestSuite() {
    delete engine_;
    delete dir_;
  }

  static std::vector<int32_t> Reference(const std::vector<int32_t>& prompt, int max_tokens) {
    return ReferenceTokens(*engine_, prompt, max_tokens);
  }

  static std::string Model() { return dir_->file("tiny-dsv3"); }

 protected:
  static ScratchDir* dir_;
  static Engine* engine_;
  ScratchDir logs_;
};
ScratchDir* ServingTest::dir_ = nullptr;
Engine* ServingTest::engine_ = nullptr;

std::vector<int32_t> Prompt(int i) {
  std::vector<int32_t> p;
  for (int j = 0; j < 1 + (i * 7) % 40; ++j) p.push_back((i * 31 + j * 17 + 3) % 512);
  return p;
}

void ConcurrentClientsMatchOfflineGeneration(const std::string& model, Engine& reference,
                                             const ClusterOptions& o,
                                             const std::string& log_dir) {
  ServingCluster cluster(model, o, log_dir);
  cluster.StartWorkers();
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
  // 32 clients at once: 20 greedy of different lengths, 6 seeded sampling requests sent twice.
  struct Job {
    moe::v1::GenerateRequest req;
    int twin = -1;  // index of the identical seeded request
  };
  std::vector<Job> jobs;
  for (int i = 0; i < 20; ++i) jobs.push_back({Request(Prompt(i), 1 + (i * 5) % 24)});
  // Some ask for log-probabilities (which travel from their group's sampling rank to the leader).
  for (int i = 0; i < 20; i += 3) jobs[static_cast<size_t>(i)].req.set_logprobs(i % 2 ? 0 : 3);
  for (int i = 0; i < 6; ++i) {
    moe::v1::GenerateRequest r = Request(Prompt(100 + i), 12);
    r.mutable_sampling()->set_temperature(0.7f + 0.1f * i);
    r.mutable_sampling()->set_top_p(i % 2 ? 0.9f : 1.0f);
    r.mutable_sampling()->set_top_k(i % 3 == 0 ? 0 : 50);
    r.mutable_sampling()->set_seed(1000 + i);
    jobs.push_back({r, static_cast<int>(jobs.size()) + 1});
    jobs.push_back({r, static_cast<int>(jobs.size()) - 1});
  }
  ASSERT_EQ(jobs.size(), 32u);
  std::vector<Outcome> out(jobs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < jobs.size(); ++i) {
    threads.emplace_back([&, i] { out[i] = Generate(cluster.stub(), jobs[i].req); });
  }
  for (auto& th : threads) th.join();
  for (size_t i = 0; i < jobs.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("request ", i));
    ASSERT_TRUE(out[i].status.ok()) << out[i].status.error_message() << cluster.Logs();
    const int max_tokens = jobs[i].req.max_tokens();
    // Nothing lost or duplicated: every token the server counted arrived exactly once.
    EXPECT_EQ(static_cast<int>(out[i].tokens.size()), max_tokens);
    EXPECT_EQ(out[i].completion_tokens, max_tokens);
    EXPECT_EQ(out[i].reason, moe::v1::FINISH_REASON_LENGTH);
    if (jobs[i].twin < 0) {
      const std::vector<int32_t> prompt(jobs[i].req.prompt_ids().begin(),
                                        jobs[i].req.prompt_ids().end());
      EXPECT_EQ(out[i].tokens, ReferenceTokens(reference, prompt, max_tokens));
      if (jobs[i].req.has_logprobs()) {
        ExpectLogprobsNear(out[i].logprobs,
                           ReferenceLogprobs(reference, prompt, max_tokens, jobs[i].req.logprobs()));
      } else {
        EXPECT_TRUE(out[i].logprobs.empty());
      }
    } else {
      EXPECT_EQ(out[i].tokens, out[jobs[i].twin].tokens);  // same seed, same output
    }
  }
  // Seeded sampling is reproducible across runs too.
  for (int i = 20; i < 32; i += 2) {
    EXPECT_EQ(Generate(cluster.stub(), jobs[i].req).tokens, out[i].tokens);
  }
  EXPECT_EQ(cluster.Metric("moe_kv_blocks_used"), 0);
  if (std::count(o.coordinator_flags.begin(), o.coordinator_flags.end(), "--mtp")) {
    EXPECT_GT(cluster.Metric("moe_spec_decode_draft_tokens_total"), 100) << cluster.Metrics();
  }
  if (std::count(o.coordinator_flags.begin(), o.coordinator_flags.end(), "--eplb-interval-steps")) {
    EXPECT_GT(cluster.Metric("moe_eplb_rebalances_total"), 0) << cluster.Metrics();
    EXPECT_GE(cluster.Metric("moe_expert_rank_imbalance"), 1.0) << cluster.Metrics();
    EXPECT_THAT(cluster.Logs(), HasSubstr("MoE layers' experts moved"));  // on the workers
  }
}

// Prefix caching (on by default) on two DP groups: prompts sharing none, part of one, one and
// several full blocks of a prefix, a multi-turn conversation, concurrent sharers, one of two
// sharers cancelled, and a cache small enough to evict — every output equals the engine alone's,
// hits and evictions are counted, and no block stays held. Off, the same outputs and no hits.
TEST_F(ServingTest, PrefixCacheKeepsOutputsRight) {
  std::vector<int32_t> system;
  for (int j = 0; j < 50; ++j) system.push_back((j * 13 + 7) % 512);  // 3 blocks of 16, and 2
  auto prompt = [&](int prefix, int i) {
    std::vector<int32_t> p(system.begin(), system.begin() + prefix);
    for (int j = 0; j < 5; ++j) p.push_back((i * 37 + j * 11 + 1) % 512);
    return p;
  };
  for (const bool cache : {true, false}) {
    SCOPED_TRACE(cache ? "prefix cache on" : "prefix cache off");
    ScratchDir logs;
    std::vector<std::string> flags = {"--block-size", "16", "--kv-blocks", "40"};
    if (!cache) flags.push_back("--no-prefix-cache");
    ServingCluster cluster(Model(), {2, 1, true, flags}, logs.path());
    cluster.StartWorkers();
    ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
    for (int prefix : {0, 10, 16, 50}) {
      for (int i = 0; i < 3; ++i) {
        const std::vector<int32_t> p = prompt(prefix, i);
        moe::v1::GenerateRequest r = Request(p, 12);
        r.set_logprobs(2);  // the distribution, not only the argmax, must be the same
        const Outcome o = Generate(cluster.stub(), r);
        EXPECT_EQ(o.tokens, Reference(p, 12)) << prefix << " " << i;
        ExpectLogprobsNear(o.logprobs, ReferenceLogprobs(*engine_, p, 12, 2));
      }
    }
    // A conversation: each turn's prompt is the last turn's prompt and answer, and a question.
    std::vector<int32_t> turn = prompt(50, 9);
    for (int t = 0; t < 3; ++t) {
      const Outcome o = Generate(cluster.stub(), Request(turn, 20));
      ASSERT_TRUE(o.status.ok()) << o.status.error_message();
      EXPECT_EQ(o.tokens, Reference(turn, 20)) << "turn " << t;
      turn.insert(turn.end(), o.tokens.begin(), o.tokens.end());
      for (int j = 0; j < 7; ++j) turn.push_back((t * 5 + j * 3 + 2) % 512);
    }
    // Concurrent sharers, and one of two long sharers cancelled part way.
    std::vector<Outcome> out(10);
    std::vector<std::thread> threads;
    for (int i = 0; i < 10; ++i) {
      threads.emplace_back([&, i] {
        out[i] = i == 8 ? Generate(cluster.stub(), Request(prompt(50, 100 + i), 60), absl::Seconds(120), 5)
                        : Generate(cluster.stub(), Request(prompt(50, 100 + i), i == 9 ? 60 : 16));
      });
    }
    for (auto& th : threads) th.join();
    for (int i = 0; i < 10; ++i) {
      if (i == 8) {
        EXPECT_EQ(out[i].status.error_code(), grpc::StatusCode::CANCELLED);
        continue;
      }
      EXPECT_EQ(out[i].tokens, Reference(prompt(50, 100 + i), i == 9 ? 60 : 16)) << "concurrent " << i;
    }
    // More distinct prefixes than the cache holds.
    for (int i = 0; i < 12; ++i) {
      std::vector<int32_t> p;
      for (int j = 0; j < 70; ++j) p.push_back((i * 101 + j * 7 + 3) % 512);
      EXPECT_EQ(Generate(cluster.stub(), Request(p, 4)).tokens, Reference(p, 4)) << "distinct " << i;
    }
    EXPECT_EQ(cluster.Metric("moe_kv_blocks_used"), 0) << cluster.Metrics();
    if (cache) {
      EXPECT_GT(cluster.Metric("moe_prefix_cache_hits_total"), 16 * 10) << cluster.Metrics();
      EXPECT_GT(cluster.Metric("moe_prefix_cache_evictions_total"), 0) << cluster.Metrics();
      EXPECT_GT(cluster.Metric("moe_prefix_cache_blocks"), 0) << cluster.Metrics();
    } else {
      EXPECT_EQ(cluster.Metric("moe_prefix_cache_hits_total"), 0) << cluster.Metrics();
    }
  }
}

TEST_F(ServingTest, TwoMpiWorkers) {
  ConcurrentClientsMatchOfflineGeneration(Model(), *engine_, {2, 1, true, {}}, logs_.path());
}

TEST_F(ServingTest, FourMpiWorkersTpTwo) {
  ConcurrentClientsMatchOfflineGeneration(Model(), *engine_, {4, 2, true, {}}, logs_.path());
}

TEST_F(ServingTest, TwoTcpWorkersWithoutMpirun) {
  ConcurrentClientsMatchOfflineGeneration(Model(), *engine_, {2, 2, false, {}}, logs_.path());
}

// Speculative decoding with the MTP layer (--mtp: the workers load it), prefill chunked to 24
// tokens (so chunks carry their lookahead): greedy outputs equal the engine alone's without it,
// logprobs requests are not speculated, seeded sampling stays reproducible.
TEST_F(ServingTest, MtpSpeculativeDecodingKeepsOutputs) {
  ConcurrentClientsMatchOfflineGeneration(
      Model(), *engine_, {2, 2, true, {"--mtp", "--max-batch-tokens", "24"}}, logs_.path());
}

TEST_F(ServingTest, ThreeMtpDraftTokensKeepOutputs) {
  ConcurrentClientsMatchOfflineGeneration(
      Model(), *engine_,
      {2, 2, true, {"--mtp", "--mtp-draft-tokens", "3", "--max-batch-tokens", "24"}}, logs_.path());
}

// The compact formats served: DeepSeek's fp8 and Kimi K2 Thinking's int4, under TP 2.
TEST_F(ServingTest, Fp8CheckpointServedUnderTpTwo) {
  ServedModel m = MakeServedModel(*dir_, "tiny-dsv3", WeightDType::kFP8, 42);
  ASSERT_NE(m.engine, nullptr);
  ConcurrentClientsMatchOfflineGeneration(m.dir, *m.engine, {2, 2, true, {}}, logs_.path());
}

TEST_F(ServingTest, Int4CheckpointServedUnderTpTwo) {
  ServedModel m = MakeServedModel(*dir_, "tiny-kimi-k2", WeightDType::kInt4, 43);
  ASSERT_NE(m.engine, nullptr);
  ConcurrentClientsMatchOfflineGeneration(m.dir, *m.engine, {2, 2, true, {}}, logs_.path());
}

// The GQA families served: Qwen3-MoE and Llama 4 with their experts over 4 ranks and attention
// TP 2 x DP 2 (KV heads split with the query heads), and a dense family whose TP group (4) is
// larger than its 2 KV heads.
TEST_F(ServingTest, Qwen3MoeServedUnderTpTwoDpTwo) {
  ServedModel m = MakeServedModel(*dir_, "tiny-qwen3-moe", WeightDType::kBF16, 44);
  ASSERT_NE(m.engine, nullptr);
  ConcurrentClientsMatchOfflineGeneration(m.dir, *m.engine, {4, 2, true, {}}, logs_.path());
}

TEST_F(ServingTest, Llama4ServedUnderTpTwoDpTwo) {
  ServedModel m = MakeServedModel(*dir_, "tiny-llama4", WeightDType::kBF16, 46);
  ASSERT_NE(m.engine, nullptr);
  ConcurrentClientsMatchOfflineGeneration(m.dir, *m.engine, {4, 2, true, {}}, logs_.path());
}

// Gemma 3's sliding layers in blocks of 4 (window 8): the scheduler gives back the blocks each
// window passed, under a budget that preempts; outputs equal the engine alone's.
TEST_F(ServingTest, Gemma3ServedUnderTpTwoWithSlidingWindowBlocksFreed) {
  ServedModel m = MakeServedModel(*dir_, "tiny-gemma3", WeightDType::kBF16, 47);
  ASSERT_NE(m.engine, nullptr);
  ConcurrentClientsMatchOfflineGeneration(
      m.dir, *m.engine,
      {2, 2, true, {"--block-size", "4", "--kv-blocks", "160", "--max-batch-tokens", "32"}},
      logs_.path());
}

// EPLB while serving: a model whose router favours its first experts, two redundant replicas,
// the experts moved every 4 steps from the last 8 steps' counts — under TP 2 × DP 2 the outputs
// (greedy, seeded sampling, logprobs) equal the engine alone's before, during and after the moves.
TEST_F(ServingTest, ExpertsRebalancedWhileServingKeepOutputs) {
  ServedModel m = MakeServedModel(*dir_, "tiny-dsv3", WeightDType::kF32, 48, /*router_skew=*/0.6);
  ASSERT_NE(m.engine, nullptr);
  ConcurrentClientsMatchOfflineGeneration(
      m.dir, *m.engine,
      {4,
       2,
       true,
       {"--redundant-experts", "4", "--eplb-interval-steps", "4", "--eplb-window-steps", "8",
        "--max-batch-tokens", "64"}},
      logs_.path());
}

// --two-batch-overlap: every worker's steps as two micro-batches (DP attention + EP over two
// ranks, the dispatch over MPI on the communication thread), concurrent clients mixing prefill
// chunks and decoding: the engine alone's tokens.
TEST_F(ServingTest, TwoBatchOverlapServedKeepsOutputs) {
  ServedModel m = MakeServedModel(*dir_, "tiny-dsv3", WeightDType::kF32, 49);
  ASSERT_NE(m.engine, nullptr);
  ConcurrentClientsMatchOfflineGeneration(
      m.dir, *m.engine, {2, 1, true, {"--two-batch-overlap", "--max-batch-tokens", "64"}},
      logs_.path());
}

// Streams `n` requests of 400 tokens, kills worker `victim` with SIGKILL `after` they start, and
// checks that every stream still running then ends UNAVAILABLE within 10 s (and some were).
// Returns how long after the kill the last one ended.
absl::Duration KillUnderLoad(ServingCluster& cluster, size_t victim, int n, absl::Duration after) {
  std::vector<Outcome> out(static_cast<size_t>(n));
  std::vector<absl::Time> ended(static_cast<size_t>(n));
  std::vector<std::thread> clients;
  for (int i = 0; i < n; ++i) {
    clients.emplace_back([&, i] {
      out[i] = Generate(cluster.stub(), Request(Prompt(i), 400), absl::Seconds(120));
      ended[i] = absl::Now();
    });
  }
  absl::SleepFor(after);
  const absl::Time killed = absl::Now();
  cluster.workers()[victim]->Signal(SIGKILL);
  for (auto& c : clients) c.join();
  absl::Duration slowest;
  int unavailable = 0;
  for (int i = 0; i < n; ++i) {
    slowest = std::max(slowest, ended[i] - killed);
    if (out[i].status.ok() && ended[i] < killed) continue;  // finished before the kill
    EXPECT_EQ(out[i].status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << i << ": " << out[i].status.error_message();
    EXPECT_LT(ended[i] - killed, absl::Seconds(10)) << i;
    ++unavailable;
  }
  EXPECT_GT(unavailable, 0);
  return slowest;
}

// Prefill/decode disaggregation: the main group (TP 2) prefills, a decode group of another
// layout (DP 2 × TP 1) decodes from the KV each prompt sends it; concurrent clients with chunked
// prefill, seeded sampling and logprobs get the engine alone's outputs.
TEST_F(ServingTest, DisaggregatedPrefillAndDecodeGroupsKeepOutputs) {
  ConcurrentClientsMatchOfflineGeneration(
      Model(), *engine_,
      {2, 2, true, {"--decode-world-size", "2", "--decode-tp", "1", "--max-batch-tokens", "24"}},
      logs_.path());
}

// The same with the MTP layer drafting (its cache layer travels with the decoder's), one
// process a group over TCP; and a GQA family whose KV heads are split over TP 2 in both groups.
TEST_F(ServingTest, DisaggregatedWithMtpAndWithGqaKeepOutputs) {
  ConcurrentClientsMatchOfflineGeneration(
      Model(), *engine_,
      {1, 1, false, {"--decode-world-size", "1", "--mtp", "--max-batch-tokens", "24"}},
      logs_.path());
  ServedModel m = MakeServedModel(*dir_, "tiny-qwen3-moe", WeightDType::kBF16, 44);
  ASSERT_NE(m.engine, nullptr);
  ConcurrentClientsMatchOfflineGeneration(
      m.dir, *m.engine, {2, 2, true, {"--decode-world-size", "2", "--decode-tp", "2"}},
      logs_.path());
}

// Each prompt's latent KV moves once, to every rank of its decode DP group (TP 2 here: MLA's
// latent is whole on each), and exactly the latent's bytes: prompt positions × layers ×
// (kv_lora_rank + qk_rope_head_dim) float32. Clients that go away while their prompt is being
// prefilled or sent, or while decoding, leave no block held in either group.
TEST_F(ServingTest, DisaggregatedKvMovesOnceAtTheLatentSizeAndCancellationsFreeBothGroups) {
  ServingCluster cluster(
      Model(),
      {1, 1, false, {"--decode-world-size", "2", "--decode-tp", "2", "--max-batch-tokens", "32"}},
      logs_.path());
  cluster.StartWorkers();
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
  const ModelConfig& c = engine_->config();
  const int64_t latent_per_token = c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) *
                                   static_cast<int64_t>(sizeof(float));
  int64_t want_bytes = 0;
  std::vector<Outcome> out(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    want_bytes += 2 * latent_per_token * static_cast<int64_t>(Prompt(i + 1).size());
    threads.emplace_back([&, i] { out[i] = Generate(cluster.stub(), Request(Prompt(i + 1), 6)); });
  }
  for (auto& th : threads) th.join();
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(out[i].status.ok()) << out[i].status.error_message() << cluster.Logs();
    EXPECT_EQ(out[i].tokens, Reference(Prompt(i + 1), 6)) << "request " << i;
  }
  EXPECT_EQ(cluster.Metric("moe_kv_transfers_total"), 8);
  EXPECT_EQ(cluster.Metric("moe_kv_transfer_bytes_total"), static_cast<double>(want_bytes));

  threads.clear();
  std::vector<int32_t> long_prompt;
  for (int j = 0; j < 300; ++j) long_prompt.push_back((j * 29 + 5) % 512);  // ten chunks of 32
  for (int i = 0; i < 12; ++i) {
    threads.emplace_back([&, i] {
      if (i % 2 == 0) {
        Generate(cluster.stub(), Request(long_prompt, 50), absl::Milliseconds(30 + 20 * i));
      } else {
        Generate(cluster.stub(), Request(Prompt(i), 200), absl::Seconds(60), /*cancel_after=*/3);
      }
    });
  }
  for (auto& th : threads) th.join();
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (cluster.Metric("moe_kv_blocks_used") != 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(cluster.Metric("moe_kv_blocks_used"), 0) << cluster.Metrics();
  EXPECT_EQ(cluster.Metric("moe_running_sequences"), 0) << cluster.Metrics();
  EXPECT_EQ(cluster.Metric("moe_kv_transfer_failures_total"), 0);
  // Still serving right afterwards.
  const Outcome after = Generate(cluster.stub(), Request(long_prompt, 5));
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.tokens, Reference(long_prompt, 5));
}

// kill -9 of the main group's worker: the requests already decoding in the decode group finish
// with the engine alone's tokens, new ones are refused until it is relaunched. kill -9 of the
// decode group's worker: every stream ends UNAVAILABLE at once.
TEST_F(ServingTest, DisaggregatedKillNineOfEitherGroup) {
  ServingCluster cluster(Model(), {1, 1, false, {"--decode-world-size", "1"}}, logs_.path());
  cluster.StartWorkers();
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
  std::vector<Outcome> out(8);
  std::vector<std::thread> clients;
  for (int i = 0; i < 8; ++i) {
    clients.emplace_back([&, i] { out[i] = Generate(cluster.stub(), Request(Prompt(i), 300)); });
  }
  const absl::Time sent_by = absl::Now() + absl::Seconds(10);  // every prompt prefilled and sent
  while (cluster.Metric("moe_kv_transfers_total") < 8 && absl::Now() < sent_by) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_EQ(cluster.Metric("moe_kv_transfers_total"), 8) << cluster.Logs();
  cluster.workers()[0]->Signal(SIGKILL);
  for (auto& c : clients) c.join();
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(out[i].status.ok()) << i << ": " << out[i].status.error_message() << cluster.Logs();
    EXPECT_EQ(out[i].tokens, Reference(Prompt(i), 300)) << i;
  }
  EXPECT_NE(cluster.Health(), grpc::health::v1::HealthCheckResponse::SERVING);
  const Outcome refused = Generate(cluster.stub(), Request(Prompt(1), 4));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("main group"));

  cluster.StartMainGroup();  // the launcher's restart
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
  const Outcome again = Generate(cluster.stub(), Request(Prompt(3), 8));
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_EQ(again.tokens, Reference(Prompt(3), 8));

  KillUnderLoad(cluster, 1, 8, absl::Milliseconds(300));  // the decode group's worker
  EXPECT_EQ(cluster.Metric("moe_kv_blocks_used"), 0);
}

TEST_F(ServingTest, MistralServedUnderTpFour) {
  ServedModel m = MakeServedModel(*dir_, "tiny-mistral", WeightDType::kBF16, 45);
  ASSERT_NE(m.engine, nullptr);
  ConcurrentClientsMatchOfflineGeneration(m.dir, *m.engine, {4, 4, true, {}}, logs_.path());
}

TEST_F(ServingTest, PreemptionUnderASmallKvBudgetKeepsOutputsRight) {
  // 24 blocks of 16 tokens per DP group: 384 positions for 12 requests that grow to ~80 each.
  ServingCluster cluster(
      Model(),
      {2, 1, true, {"--kv-blocks", "24", "--block-size", "16", "--max-batch-tokens", "128"}},
      logs_.path());
  cluster.StartWorkers();
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
  std::vector<Outcome> out(12);
  std::vector<std::thread> threads;
  for (int i = 0; i < 12; ++i) {
    threads.emplace_back([&, i] { out[i] = Generate(cluster.stub(), Request(Prompt(i + 3), 40)); });
  }
  for (auto& th : threads) th.join();
  for (int i = 0; i < 12; ++i) {
    ASSERT_TRUE(out[i].status.ok()) << out[i].status.error_message();
    EXPECT_EQ(out[i].tokens, Reference(Prompt(i + 3), 40)) << "request " << i;
  }
  EXPECT_GT(cluster.Metric("moe_preemptions_total"), 0) << cluster.Metrics();
  EXPECT_EQ(cluster.Metric("moe_kv_blocks_used"), 0);
}

TEST_F(ServingTest, StartupHealthBadInputsAndLimits) {
  ServingCluster cluster(Model(),
                         {1, 1, true,
                          {"--max-queue", "1", "--max-running", "1", "--max-prompt-tokens", "64",
                           "--max-new-tokens", "300", "--max-request-bytes", "4096"}},
                         logs_.path());
  // Before the workers: not serving, requests refused with UNAVAILABLE.
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(cluster.Health(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  Outcome early = Generate(cluster.stub(), Request({1, 2}, 2));
  EXPECT_EQ(early.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(early.status.error_message(), HasSubstr("waiting for workers: 0 of 1"));
  cluster.StartWorkers();
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();

  struct Bad {
    std::function<void(moe::v1::GenerateRequest&)> edit;
    std::string field;
  };
  for (const Bad& b : std::vector<Bad>{
           {[](auto& r) { r.clear_prompt_ids(); }, "prompt_ids"},
           {[](auto& r) { r.add_prompt_ids(512); }, "prompt_ids[2]"},
           {[](auto& r) { r.set_max_tokens(0); }, "max_tokens"},
           {[](auto& r) { r.set_max_tokens(600); }, "max_tokens"},
           {[](auto& r) { r.mutable_sampling()->set_temperature(-1); }, "sampling.temperature"},
           {[](auto& r) { r.mutable_sampling()->set_top_p(0); }, "sampling.top_p"},
           {[](auto& r) { r.mutable_sampling()->set_top_p(1.01f); }, "sampling.top_p"},
           {[](auto& r) { r.mutable_sampling()->set_top_k(-2); }, "sampling.top_k"},
           {[](auto& r) {
              for (int i = 0; i < 63; ++i) r.add_prompt_ids(5);
            },
            "(--max-prompt-tokens)"},
           {[](auto& r) { r.set_max_tokens(301); }, "(--max-new-tokens)"},
       }) {
    moe::v1::GenerateRequest r = Request({1, 2}, 4);
    b.edit(r);
    Outcome o = Generate(cluster.stub(), r);
    EXPECT_EQ(o.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << b.field;
    EXPECT_THAT(o.status.error_message(), HasSubstr(b.field));
  }
  // A message over --max-request-bytes: refused by gRPC before it is parsed.
  {
    moe::v1::GenerateRequest r = Request({1, 2}, 4);
    for (int i = 0; i < 3000; ++i) r.add_prompt_ids(300);
    Outcome o = Generate(cluster.stub(), r);
    EXPECT_EQ(o.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(o.status.error_message(), HasSubstr("4096"));
  }
  // One running and one waiting at most: a burst of long requests overflows the queue.
  std::vector<Outcome> out(6);
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] { out[i] = Generate(cluster.stub(), Request(Prompt(i), 200)); });
  }
  for (auto& th : threads) th.join();
  int exhausted = 0, ok = 0;
  for (const Outcome& o : out) {
    exhausted += o.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED;
    ok += o.status.ok();
  }
  EXPECT_GT(exhausted, 0);
  EXPECT_GT(ok, 0);
  EXPECT_EQ(exhausted + ok, 6);
}

TEST_F(ServingTest, CancelAndDeadlineFreeKvBlocks) {
  ServingCluster cluster(Model(), {2, 1, true, {}}, logs_.path());
  cluster.StartWorkers();
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
  const double blocks_free = cluster.Metric("moe_kv_blocks_free");
  // A deadline long before a long generation can finish.
  Outcome late = Generate(cluster.stub(), Request(Prompt(5), 450), absl::Milliseconds(100));
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(late.tokens.size(), 450u);
  // A client that cancels after a few tokens.
  Outcome cancelled = Generate(cluster.stub(), Request(Prompt(6), 450), absl::Seconds(60), 3);
  EXPECT_EQ(cancelled.status.error_code(), grpc::StatusCode::CANCELLED);
  // Within a step or two the sequences are gone and their blocks back.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (cluster.Metric("moe_kv_blocks_used") != 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(cluster.Metric("moe_kv_blocks_used"), 0);
  EXPECT_EQ(cluster.Metric("moe_kv_blocks_free"), blocks_free);
  EXPECT_EQ(cluster.Metric("moe_requests_total{outcome=\"cancelled\"}"), 2) << cluster.Metrics();
  EXPECT_EQ(cluster.Metric("moe_running_sequences"), 0);
  // Expert load is reported: tokens were routed (tiny-dsv3: 3 MoE layers x top-4 per token).
  EXPECT_GT(cluster.Metric("moe_expert_tokens_total{expert=\"0\"}") +
                cluster.Metric("moe_expert_tokens_total{expert=\"1\"}"),
            0);
}

TEST_F(ServingTest, SigtermFinishesInFlightWorkAndEverythingExits) {
  ServingCluster cluster(Model(), {2, 1, true, {"--drain-timeout-s", "60"}}, logs_.path());
  cluster.StartWorkers();
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
  Outcome out;
  std::thread client([&] { out = Generate(cluster.stub(), Request(Prompt(9), 120)); });
  absl::SleepFor(absl::Milliseconds(300));  // the request is running
  cluster.coordinator().Signal(SIGTERM);
  client.join();
  EXPECT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.tokens, Reference(Prompt(9), 120));
  EXPECT_EQ(cluster.coordinator().Wait(absl::Seconds(30)), 0) << cluster.Logs();
  for (auto& w : cluster.workers()) EXPECT_EQ(w->Wait(absl::Seconds(30)), 0) << cluster.Logs();
  // After the drain began, new requests were refused (the server is gone now).
  EXPECT_THAT(cluster.coordinator().Log(), HasSubstr("draining"));
}

// With keys configured, the public API answers UNAUTHENTICATED without a valid one; health stays
// open; a key file is re-read on SIGHUP (a revoked key stops working at once); the keys never
// appear in the log; moe-client sends its --api-key.
TEST_F(ServingTest, SecondSigtermCutsTheDrainShort) {
  // One sequence at a time, eight of 450 tokens: thousands of steps (each a gRPC round trip to
  // the leader) are still to run when the signals come.
  ServingCluster cluster(Model(), {2, 1, true, {"--drain-timeout-s", "600", "--max-running", "1"}},
                         logs_.path());
  cluster.StartWorkers();
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
  std::vector<Outcome> out(8);
  std::vector<std::thread> clients;
  for (int i = 0; i < 8; ++i) {
    clients.emplace_back([&, i] {
      out[i] = Generate(cluster.stub(), Request(Prompt(i + 2), 450), absl::Seconds(60));
    });
  }
  absl::SleepFor(absl::Milliseconds(300));  // the requests are running
  cluster.coordinator().Signal(SIGTERM);
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_THAT(cluster.coordinator().Log(), HasSubstr("draining"));
  const absl::Time second = absl::Now();
  cluster.coordinator().Signal(SIGTERM);
  EXPECT_EQ(cluster.coordinator().Wait(absl::Seconds(10)), 2) << cluster.Logs();
  EXPECT_LT(absl::Now() - second, absl::Seconds(5)) << "the second SIGTERM did not exit at once";
  for (auto& c : clients) c.join();  // no stream hangs on a coordinator that is gone
  int cut = 0;
  for (const Outcome& o : out) cut += o.status.ok() ? 0 : 1;
  EXPECT_GT(cut, 0) << "every request finished: the drain was not cut short";
}

TEST_F(ServingTest, ApiKeysGuardThePublicApiAndReloadOnSighup) {
  const std::string key_file = logs_.path() + "/keys";
  ::moe::testing::WriteFile(key_file, "# operators\nkey-from-file-1\n\nkey-from-file-2\n");
  ServingCluster cluster(Model(),
                         {1, 1, true,
                          {"--api-key", "flag-key-0123", "--api-key-file", key_file,
                           "--metrics-need-key", "--metrics-host", "127.0.0.1"}},
                         logs_.path());
  cluster.StartWorkers();
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();  // health needs no key
  // /metrics behind the keys too (--metrics-need-key), on loopback (--metrics-host).
  EXPECT_EQ(cluster.MetricsStatus(""), 401);
  EXPECT_EQ(cluster.MetricsStatus("Bearer wrong-key"), 401);
  EXPECT_EQ(cluster.MetricsStatus("Bearer flag-key-0123"), 200);
  EXPECT_THAT(cluster.coordinator().Log(), HasSubstr("metrics on http://127.0.0.1:"));
  const std::vector<int32_t> prompt = Prompt(6);
  const std::vector<int32_t> want = Reference(prompt, 4);
  auto generate = [&](const std::string& authorization) {
    return Generate(cluster.stub(), Request(prompt, 4), absl::Seconds(60), -1, authorization);
  };
  EXPECT_EQ(generate("").status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(generate("Bearer wrong-key").status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(generate("flag-key-0123").status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
      << "a key without the Bearer scheme";
  EXPECT_EQ(generate("Bearer flag-key-012").status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
      << "a prefix of a key";
  for (const std::string auth :
       {"Bearer flag-key-0123", "bearer key-from-file-1", "Bearer key-from-file-2"}) {
    const Outcome out = generate(auth);
    EXPECT_TRUE(out.status.ok()) << auth << ": " << out.status.error_message();
    EXPECT_EQ(out.tokens, want) << auth;
  }
  {
    grpc::ClientContext ctx;
    moe::v1::ModelInfo info;
    EXPECT_EQ(cluster.stub().GetModelInfo(&ctx, {}, &info).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  // Revoke key 1, add key 3, SIGHUP: the change takes effect without a restart.
  ::moe::testing::WriteFile(key_file, "key-from-file-2\nkey-from-file-3\n");
  cluster.coordinator().Signal(SIGHUP);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (cluster.coordinator().Log().find("API keys reloaded") == std::string::npos &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(generate("Bearer key-from-file-1").status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(generate("Bearer key-from-file-3").status.ok());
  EXPECT_TRUE(generate("Bearer flag-key-0123").status.ok());
  // The command-line client.
  const std::string port = cluster.address();
  auto r = ::moe::testing::RunCommand(absl::StrCat(BinaryPath("tools/moe-client"), " --server ",
                                                   port, " --api-key key-from-file-3 --prompt-ids ",
                                                   absl::StrJoin(prompt, ","),
                                                   " --max-tokens 4 --ignore-eos"));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, absl::StrJoin(want, " ") + "\n");
  r = ::moe::testing::RunCommand(absl::StrCat(BinaryPath("tools/moe-client"), " --server ", port,
                                              " --prompt-ids 1,2 --max-tokens 2"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("UNAUTHENTICATED"));
  // The Python example client, through the project's venv.
  r = ::moe::testing::RunCommand(
      absl::StrCat(MOE_PYTHON, " ", MOE_SOURCE_DIR, "/tools/python/moe_client.py --server ", port,
                   " --api-key key-from-file-3 --prompt-ids ", absl::StrJoin(prompt, ","),
                   " --max-tokens 4 --ignore-eos"));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, absl::StrJoin(want, " ") + "\n");
  for (const char* key :
       {"flag-key-0123", "key-from-file-1", "key-from-file-2", "key-from-file-3"}) {
    EXPECT_THAT(cluster.coordinator().Log(), ::testing::Not(HasSubstr(key))) << "a key was logged";
  }
}

TEST_F(ServingTest, PythonExampleClient) {
  // The project's venv (MOE_PYTHON; tools/install-deps.sh puts grpcio-tools there), never the
  // python3 on PATH, which need not have gRPC.
  const std::string python = MOE_PYTHON;
  ASSERT_EQ(std::system((python + " -c 'import grpc_tools' >/dev/null 2>&1").c_str()), 0)
      << "no grpcio-tools in " << python << " (tools/install-deps.sh installs it)";
  ServingCluster cluster(Model(), {1, 1, true, {}}, logs_.path());
  cluster.StartWorkers();
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
  const std::vector<int32_t> prompt = Prompt(12);
  auto r = ::moe::testing::RunCommand(
      absl::StrCat(python, " ", MOE_SOURCE_DIR, "/tools/python/moe_client.py --server ",
                   "127.0.0.1:", "$(grep -o 'listening on port [0-9]*' ", logs_.path(),
                   "/coordinator.log | grep -o '[0-9]*$') --prompt-ids ",
                   absl::StrJoin(prompt, ","), " --max-tokens 8 --ignore-eos"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, absl::StrJoin(Reference(prompt, 8), " ") + "\n");
  // Text in, text streamed out.
  auto tokenizer = text::LoadTokenizer(Model());
  ASSERT_TRUE(tokenizer.ok());
  r = ::moe::testing::RunCommand(absl::StrCat(
      python, " ", MOE_SOURCE_DIR, "/tools/python/moe_client.py --server ", cluster.address(),
      " --prompt '你好, world' --max-tokens 8 --ignore-eos"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, (*tokenizer)->Decode(Reference((*tokenizer)->Encode("你好, world"), 8), true).value() +
                       "\n");
}

// Text in, text out: the coordinator encodes with the checkpoint's tokenizer (moe-make-model
// writes DeepSeek-V3's layout; the tokenizer itself is checked against HF tokenizers by
// tests/text/tokenizer_parity.py) and streams text that never cuts a character.
TEST_F(ServingTest, TextPromptsStreamText) {
  auto tokenizer = text::LoadTokenizer(Model());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  ServingCluster cluster(Model(), {1, 1, true, {}}, logs_.path());
  cluster.StartWorkers();
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
  for (const std::string prompt :
       {"Hello, world!", "你好，世界。DeepSeek-V3 的 MoE", "emoji 🚀👩‍💻 and\ttabs\n\nnew lines",
        "x"}) {
    SCOPED_TRACE(prompt);
    moe::v1::GenerateRequest r = Request({}, 24);
    r.set_prompt(prompt);
    const Outcome o = Generate(cluster.stub(), r);
    ASSERT_TRUE(o.status.ok()) << o.status.error_message();
    const std::vector<int32_t> ids = (*tokenizer)->Encode(prompt);
    EXPECT_EQ(ids.front(), 0);  // DeepSeek's BOS, as its tokenizer_config.json asks
    EXPECT_EQ(o.prompt_tokens, static_cast<int>(ids.size()));
    EXPECT_EQ(o.tokens, Reference(ids, 24));
    EXPECT_EQ(o.text, (*tokenizer)->Decode(o.tokens, /*skip_special_tokens=*/true).value());
    EXPECT_TRUE(o.every_chunk_utf8);
  }
  // Special tokens kept on request; ids and text at once is refused.
  moe::v1::GenerateRequest r = Request({}, 8);
  r.set_prompt("Hi");
  r.set_skip_special_tokens(false);
  const Outcome kept = Generate(cluster.stub(), r);
  ASSERT_TRUE(kept.status.ok());
  EXPECT_EQ(kept.text, (*tokenizer)->Decode(kept.tokens).value());
  r.add_prompt_ids(5);
  EXPECT_EQ(Generate(cluster.stub(), r).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // moe-client --prompt streams the same text.
  const std::vector<int32_t> ids = (*tokenizer)->Encode("Hello, world!");
  auto run = ::moe::testing::RunCommand(absl::StrCat(
      BinaryPath("tools/moe-client"), " --server ", cluster.address(),
      " --prompt 'Hello, world!' --max-tokens 12 --ignore-eos"));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out,
            (*tokenizer)->Decode(Reference(ids, 12), /*skip_special_tokens=*/true).value() + "\n");

  // A conversation, rendered with the checkpoint's chat template (moe-make-model writes
  // DeepSeek-V3.1's; what it renders for this conversation is spelled out here) and encoded
  // without adding a second BOS.
  const std::string rendered = "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi there<｜Assistant｜></think>";
  const std::vector<int32_t> chat_ids = (*tokenizer)->Encode(rendered, /*add_special_tokens=*/false);
  EXPECT_EQ(std::count(chat_ids.begin(), chat_ids.end(), 0), 1);
  moe::v1::GenerateRequest chat = Request({}, 12);
  for (const auto& [role, content] : {std::pair<std::string, std::string>{"system", "Be brief."},
                                      {"user", "Hi there"}}) {
    moe::v1::ChatMessage* m = chat.add_messages();
    m->set_role(role);
    m->set_content(content);
  }
  const Outcome answer = Generate(cluster.stub(), chat);
  ASSERT_TRUE(answer.status.ok()) << answer.status.error_message();
  EXPECT_EQ(answer.prompt_tokens, static_cast<int>(chat_ids.size()));
  EXPECT_EQ(answer.tokens, Reference(chat_ids, 12));
  run = ::moe::testing::RunCommand(absl::StrCat(BinaryPath("tools/moe-client"), " --server ",
                                                cluster.address(),
                                                " --system 'Be brief.' --chat 'Hi there' --max-tokens 12 --ignore-eos"));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, (*tokenizer)->Decode(answer.tokens, /*skip_special_tokens=*/true).value() + "\n");
  chat.add_prompt_ids(5);  // a conversation and ids at once
  EXPECT_EQ(Generate(cluster.stub(), chat).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// Without a usable tokenizer the coordinator still serves token ids; text requests get an error
// naming what is missing or broken, which the log says at start-up too.
TEST_F(ServingTest, MissingOrBrokenTokenizerLeavesTokenIdsWorking) {
  ScratchDir broken;
  { std::ofstream(broken.file("tokenizer.json")) << R"({"model": {"type": "BPE", "vocab": )"; }
  ScratchDir empty;
  for (const auto& [dir, why] : std::vector<std::pair<std::string, std::string>>{
           {broken.path(), broken.file("tokenizer.json") + ": not JSON"},
           {empty.path(), "expected tokenizer.json or tiktoken.model"}}) {
    SCOPED_TRACE(why);
    ScratchDir logs;
    ServingCluster cluster(Model(), {1, 1, true, {"--tokenizer", dir}}, logs.path());
    cluster.StartWorkers();
    ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
    EXPECT_THAT(cluster.coordinator().Log(), HasSubstr(why));
    moe::v1::GenerateRequest r = Request({}, 4);
    r.set_prompt("Hello");
    const Outcome text = Generate(cluster.stub(), r);
    EXPECT_EQ(text.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_THAT(text.status.error_message(), HasSubstr(why));
    const Outcome ids = Generate(cluster.stub(), Request(Prompt(3), 4));
    ASSERT_TRUE(ids.status.ok()) << ids.status.error_message();
    EXPECT_EQ(ids.tokens, Reference(Prompt(3), 4));
    EXPECT_TRUE(ids.text.empty());
  }
}

// The workers' control plane is not on the public port: a client there cannot register as a
// worker (UNIMPLEMENTED, the service is not served), only on --cluster-listen.
TEST_F(ServingTest, ControlPlaneIsNotOnThePublicPort) {
  ServingCluster cluster(Model(), {1, 1, true, {}}, logs_.path());
  absl::SleepFor(absl::Milliseconds(300));
  auto call_register = [](const std::string& address) {
    auto stub = moe::v1::Cluster::NewStub(
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    moe::v1::RegisterRequest req;
    moe::v1::RegisterResponse resp;
    return stub->Register(&ctx, req, &resp);
  };
  const grpc::Status on_public = call_register(cluster.address());
  EXPECT_EQ(on_public.error_code(), grpc::StatusCode::UNIMPLEMENTED) << on_public.error_message();
  const grpc::Status on_cluster = call_register(cluster.cluster_address());
  EXPECT_EQ(on_cluster.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << on_cluster.error_message();  // it is there (and refuses a request of world size 0)
  cluster.StartWorkers();
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
}

// kill -9 of one worker while 32 streams are in flight: every stream ends UNAVAILABLE within 10 s
// (none hangs), health turns NOT_SERVING and new requests are refused UNAVAILABLE; the surviving
// rank leaves; relaunched workers are served by the same coordinator, outputs equal to one
// rank's, and the KV accounting is back to zero.
TEST_F(ServingTest, KillNineOfAWorkerUnderLoad) {
  ServingCluster cluster(Model(), {2, 1, false, {}}, logs_.path());  // W processes, TCP mesh
  cluster.StartWorkers();
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
  // Prompts of several full blocks, cached before the kill: the relaunched workers' caches are
  // empty, so the coordinator must not reuse them.
  std::vector<std::vector<int32_t>> long_prompts(2);
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 150 + i; ++j) long_prompts[i].push_back((j * 31 + 7) % 512);
    ASSERT_TRUE(Generate(cluster.stub(), Request(long_prompts[i], 4)).status.ok());
  }
  // Every stream admitted, tokens flowing, then rank 1 killed.
  const absl::Duration slowest = KillUnderLoad(cluster, 1, 32, absl::Milliseconds(800));
  std::printf("kill -9 of rank 1: the streams ended within %.2f s\n",
              absl::ToDoubleSeconds(slowest));
  EXPECT_NE(cluster.Health(), grpc::health::v1::HealthCheckResponse::SERVING);
  const Outcome refused = Generate(cluster.stub(), Request(Prompt(1), 4));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << refused.status.error_message();
  // The surviving rank learns that its session ended and exits.
  EXPECT_TRUE(cluster.workers()[0]->Wait(absl::Seconds(30)).has_value()) << cluster.Logs();
  EXPECT_EQ(cluster.Metric("moe_kv_blocks_used"), 0);

  cluster.StartWorkers();  // the launcher's restart
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
  for (int i = 0; i < 4; ++i) {
    const Outcome o = Generate(cluster.stub(), Request(Prompt(i), 12));
    ASSERT_TRUE(o.status.ok()) << o.status.error_message();
    EXPECT_EQ(o.tokens, Reference(Prompt(i), 12));
  }
  for (const auto& p : long_prompts) {
    const Outcome o = Generate(cluster.stub(), Request(p, 12));
    ASSERT_TRUE(o.status.ok()) << o.status.error_message();
    EXPECT_EQ(o.tokens, Reference(p, 12)) << "a prefix cached before the restart was reused";
  }
  EXPECT_EQ(cluster.Metric("moe_kv_blocks_used"), 0);
}

// 100 clients that go away mid-stream, one after another: each frees its KV blocks.
TEST_F(ServingTest, HundredCancellationsInARowFreeEveryBlock) {
  ServingCluster cluster(Model(), {1, 1, true, {}}, logs_.path());
  cluster.StartWorkers();
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
  for (int i = 0; i < 100; ++i) {
    const Outcome o = Generate(cluster.stub(), Request(Prompt(i), 300), absl::Seconds(60),
                               /*cancel_after=*/1 + i % 3);
    ASSERT_EQ(o.status.error_code(), grpc::StatusCode::CANCELLED) << i;
  }
  for (int i = 0; i < 50 && cluster.Metric("moe_kv_blocks_used") != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(cluster.Metric("moe_kv_blocks_used"), 0);
  EXPECT_EQ(cluster.Metric("moe_running_sequences"), 0);
  EXPECT_EQ(cluster.Metric("moe_queue_depth"), 0);
  const Outcome after = Generate(cluster.stub(), Request(Prompt(5), 8));
  ASSERT_TRUE(after.status.ok());
  EXPECT_EQ(after.tokens, Reference(Prompt(5), 8));
}

// kill -9 of the coordinator under load: the client's stream fails at once, the workers notice
// within --coordinator-lost-s and exit (code 3: their launcher restarts them), and a restarted
// coordinator with relaunched workers serves again.
TEST_F(ServingTest, KillNineOfTheCoordinator) {
  {
    // Eight long requests one at a time: seconds of work still to run when the kill comes.
    ServingCluster cluster(Model(), {2, 1, true, {"--max-running", "1"}}, logs_.path());
    cluster.AddWorkerFlags({"--coordinator-lost-s", "3"});
    cluster.StartWorkers();
    ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
    std::vector<Outcome> out(8);
    std::vector<std::thread> clients;
    for (int i = 0; i < 8; ++i) {
      clients.emplace_back([&, i] { out[i] = Generate(cluster.stub(), Request(Prompt(i), 450)); });
    }
    absl::SleepFor(absl::Milliseconds(500));
    const absl::Time killed = absl::Now();
    cluster.coordinator().Signal(SIGKILL);
    for (auto& c : clients) c.join();
    int unavailable = 0;
    for (const Outcome& o : out) {
      if (o.status.ok()) continue;  // finished before the kill
      EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE) << o.status.error_message();
      ++unavailable;
    }
    EXPECT_GT(unavailable, 0);
    const std::optional<int> code = cluster.workers()[0]->Wait(absl::Seconds(20));
    ASSERT_TRUE(code.has_value()) << "the workers did not exit\n" << cluster.Logs();
    EXPECT_NE(*code, 0);
    std::printf("kill -9 of the coordinator: the workers exited %.1f s later (code %d)\n",
                absl::ToDoubleSeconds(absl::Now() - killed), *code);
    EXPECT_THAT(cluster.workers()[0]->Log(), HasSubstr("session is lost"));
  }
  ScratchDir logs;
  ServingCluster again(Model(), {2, 1, true, {}}, logs.path());
  again.StartWorkers();
  ASSERT_TRUE(again.WaitServing()) << again.Logs();
  const Outcome o = Generate(again.stub(), Request(Prompt(2), 12));
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_EQ(o.tokens, Reference(Prompt(2), 12));
}

// TLS on the public port, with client certificates required (mTLS): moe-client and the Python
// client get through with the CA and a client certificate, not without; the workers' control
// plane is unaffected. Certificates from deploy/tls/make-test-certs.sh (openssl).
TEST_F(ServingTest, TlsAndMutualTlsOnThePublicPort) {
  const std::string certs = logs_.path() + "/certs";
  auto made = ::moe::testing::RunCommand(
      absl::StrCat(MOE_SOURCE_DIR, "/deploy/tls/make-test-certs.sh ", certs));
  ASSERT_EQ(made.exit_code, 0) << made.err;
  const int http_port = FreePort();
  ServingCluster cluster(Model(),
                         {1, 1, true,
                          {"--tls-cert", certs + "/server.pem", "--tls-key", certs + "/server.key",
                           "--tls-client-ca", certs + "/ca.pem", "--http-listen",
                           absl::StrCat("127.0.0.1:", http_port)}},
                         logs_.path());
  cluster.StartWorkers();
  const std::string client = absl::StrCat(BinaryPath("tools/moe-client"), " --server ",
                                          cluster.address(), " --timeout-s 10");
  const std::string mtls = absl::StrCat(" --tls-ca ", certs, "/ca.pem --tls-cert ", certs,
                                        "/client.pem --tls-key ", certs, "/client.key");
  bool serving = false;
  for (int i = 0; i < 300 && !serving; ++i) {
    serving = ::moe::testing::RunCommand(client + mtls + " --health").exit_code == 0;
    if (!serving) absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_TRUE(serving) << cluster.Logs();
  EXPECT_THAT(cluster.coordinator().Log(), HasSubstr("TLS with client certificates (mTLS)"));
  const std::vector<int32_t> prompt = Prompt(4);
  const std::string ids = absl::StrJoin(prompt, ",");
  auto ok = ::moe::testing::RunCommand(client + mtls + " --prompt-ids " + ids +
                                       " --max-tokens 6 --ignore-eos");
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(ok.out, absl::StrJoin(Reference(prompt, 6), " ") + "\n");
  // Plaintext, and TLS without a client certificate, are refused.
  for (const std::string& flags : {std::string(""), absl::StrCat(" --tls-ca ", certs, "/ca.pem")}) {
    auto refused = ::moe::testing::RunCommand(client + flags + " --prompt-ids 1,2 --max-tokens 2");
    EXPECT_NE(refused.exit_code, 0) << flags;
    EXPECT_THAT(refused.err, HasSubstr("UNAVAILABLE")) << flags;
  }
  auto python = ::moe::testing::RunCommand(absl::StrCat(
      MOE_PYTHON, " ", MOE_SOURCE_DIR, "/tools/python/moe_client.py --server ", cluster.address(),
      mtls, " --prompt-ids ", ids, " --max-tokens 6 --ignore-eos"));
  ASSERT_EQ(python.exit_code, 0) << python.err;
  EXPECT_EQ(python.out, ok.out);
  // The HTTP API is HTTPS with the same certificate and client CA.
  httplib::SSLClient with_cert("127.0.0.1", http_port, certs + "/client.pem", certs + "/client.key");
  with_cert.set_ca_cert_path(certs + "/ca.pem");
  with_cert.enable_server_certificate_verification(true);
  auto models = with_cert.Get("/v1/models");
  ASSERT_TRUE(models) << httplib::to_string(models.error());
  EXPECT_EQ(models->status, 200);
  EXPECT_THAT(models->body, HasSubstr("tiny-dsv3"));
  httplib::SSLClient without_cert("127.0.0.1", http_port);
  without_cert.set_ca_cert_path(certs + "/ca.pem");
  without_cert.enable_server_certificate_verification(true);
  EXPECT_FALSE(without_cert.Get("/v1/models")) << "mTLS: no client certificate, no answer";
  httplib::Client plain("127.0.0.1", http_port);
  EXPECT_FALSE(plain.Get("/v1/models")) << "plaintext HTTP to the HTTPS port";
}

// Mutual TLS with the cluster CA on the control plane and the TCP mesh: workers holding a
// certificate it signed register, join the mesh and serve; anything else calling the control
// plane — plaintext, TLS without a certificate, another CA's certificate, a worker of another
// cluster — is refused before a request is read.
TEST_F(ServingTest, MutualTlsOnTheControlPlaneAndTheMesh) {
  const std::string certs = logs_.path() + "/certs", other = logs_.path() + "/other";
  for (const std::string& dir : {certs, other}) {
    auto made = ::moe::testing::RunCommand(
        absl::StrCat(MOE_SOURCE_DIR, "/deploy/tls/make-test-certs.sh ", dir));
    ASSERT_EQ(made.exit_code, 0) << made.err;
  }
  auto tls_flags = [](const std::string& dir) {
    return std::vector<std::string>{"--cluster-cert", dir + "/cluster.pem", "--cluster-key",
                                    dir + "/cluster.key", "--cluster-ca", dir + "/cluster-ca.pem"};
  };
  // With a decode group too, whose KV transfer is then mutual TLS as well.
  std::vector<std::string> coordinator_flags = tls_flags(certs);
  coordinator_flags.insert(coordinator_flags.end(), {"--decode-world-size", "1"});
  ServingCluster cluster(Model(), {2, 1, /*mpirun=*/false, coordinator_flags}, logs_.path());
  cluster.AddWorkerFlags(tls_flags(certs));
  cluster.StartWorkers();
  ASSERT_TRUE(cluster.WaitServing()) << cluster.Logs();
  EXPECT_THAT(cluster.coordinator().Log(), HasSubstr("control plane: mutual TLS"));
  for (int w = 0; w < 2; ++w) {
    EXPECT_THAT(cluster.workers()[w]->Log(), HasSubstr("TCP mesh joined: mutual TLS"));
  }
  EXPECT_THAT(cluster.workers()[2]->Log(), HasSubstr("receiving prompts' KV on 127.0.0.1:"));
  EXPECT_THAT(cluster.workers()[2]->Log(), HasSubstr("(mutual TLS with the cluster CA)"));
  const std::vector<int32_t> prompt = Prompt(5);
  const Outcome o = Generate(cluster.stub(), Request(prompt, 10));
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_EQ(o.tokens, Reference(prompt, 10));

  auto call_register = [&](std::shared_ptr<grpc::ChannelCredentials> credentials) {
    auto stub = moe::v1::Cluster::NewStub(
        grpc::CreateChannel(cluster.cluster_address(), credentials));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    moe::v1::RegisterRequest req;
    moe::v1::RegisterResponse resp;
    return stub->Register(&ctx, req, &resp);
  };
  auto pem = [](const std::string& path) { return *ReadPemFile(path, "test"); };
  grpc::SslCredentialsOptions no_cert;
  no_cert.pem_root_certs = pem(certs + "/cluster-ca.pem");
  grpc::SslCredentialsOptions foreign = no_cert;
  foreign.pem_private_key = pem(other + "/cluster.key");
  foreign.pem_cert_chain = pem(other + "/cluster.pem");
  for (const auto& [what, credentials] :
       std::vector<std::pair<std::string, std::shared_ptr<grpc::ChannelCredentials>>>{
           {"plaintext", grpc::InsecureChannelCredentials()},
           {"TLS without a certificate", grpc::SslCredentials(no_cert)},
           {"another CA's certificate", grpc::SslCredentials(foreign)}}) {
    const grpc::Status s = call_register(credentials);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << what << ": " << s.error_message();
  }
  // A worker of another cluster cannot register (nor disturb this one).
  Process stranger({BinaryPath("worker/moe-worker"), "--coordinator", cluster.cluster_address(),
                    "--model", Model(), "--rank", "1", "--world-size", "2", "--host",
                    "127.0.0.1", "--register-timeout-s", "3", "--cluster-cert",
                    other + "/cluster.pem", "--cluster-key", other + "/cluster.key",
                    "--cluster-ca", other + "/cluster-ca.pem"},
                   logs_.path() + "/stranger.log");
  const std::optional<int> code = stranger.Wait(absl::Seconds(30));
  ASSERT_TRUE(code.has_value()) << stranger.Log();
  EXPECT_EQ(*code, 1) << stranger.Log();
  std::printf("a worker of another cluster: %s\n", stranger.Log().c_str());
  EXPECT_THAT(cluster.coordinator().Log(), Not(HasSubstr("rank 1 registered again")));
  const Outcome after = Generate(cluster.stub(), Request(prompt, 10));
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.tokens, o.tokens);
  EXPECT_EQ(cluster.Metric("moe_kv_transfers_total"), 2);
}

}  // namespace
}  // namespace moe
