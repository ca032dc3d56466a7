// Load generator for a moe-coordinator, and the offline baseline it is compared with.
//   served:  load_generator --server HOST:PORT --concurrency 8 --requests 32
//            load_generator --server HOST:PORT --rate 2.5 --requests 64      (Poisson arrivals)
//   HTTP:    load_generator --http HOST:PORT --concurrency 8 --requests 32   (OpenAI API, SSE)
//   offline: load_generator --offline --model DIR --concurrency 8 --requests 32
// Every request has --prompt-len prompt tokens and asks for exactly --output-len tokens (EOS
// ignored, greedy). For prefix caching: --shared-prefix N makes the first N tokens of every
// prompt the same (a system prompt); --turns T groups requests into conversations of T turns,
// each turn's prompt the previous one's and --prompt-len more, sent in order. For a mixed load:
// --long-every K makes every K-th request's prompt --long-prompt-len tokens. Reports output
// tokens/s, time to first token and inter-token latency percentiles (by prompt class when mixed).
// The offline mode runs the same requests through the engine in this process, in batches of
// --concurrency (the code path of moe-generate): the bound for the served figure. Over HTTP a
// streamed event carries the text of one step's token (two when a character spans them: such an
// event counts its gap once), and the token count comes from the usage chunk.
#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>

#include "common/cli.h"
#include "common/machine_info.h"
#include "kernels/cpu/ops.h"
#include "moe/v1/inference.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "parallel/mpi_communicator.h"
#include "worker/engine.h"
#include "worker/generator.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

std::vector<int32_t> PromptFor(int64_t i, int64_t len, int64_t vocab, int64_t shared = 0) {
  std::vector<int32_t> p;
  for (int64_t j = 0; j < len; ++j) {
    p.push_back(static_cast<int32_t>(j < shared ? (j * 104729 + 17) % vocab
                                                : (i * 7919 + j * 104729 + 11) % vocab));
  }
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  std::string server, model, http;
  int64_t concurrency = 8, requests = 32, prompt_len = 64, output_len = 64, vocab = 32000;
  int64_t threads = 0, tp = 1, shared_prefix = 0, turns = 1, long_every = 0, long_prompt_len = 0;
  double rate = 0;
  bool offline = false;
  moe::FlagParser flags("load_generator",
                        "Load for a moe-coordinator (closed loop at --concurrency, or Poisson at "
                        "--rate req/s), or the\nsame requests offline through the engine.");
  flags.AddString("server", &server, "Coordinator HOST:PORT (gRPC).");
  flags.AddString("http", &http, "Coordinator's OpenAI-compatible HTTP API HOST:PORT instead.");
  flags.AddBool("offline", &offline, "Run the requests through the engine in-process instead.");
  flags.AddString("model", &model, "Checkpoint folder (offline mode).");
  flags.AddInt("concurrency", &concurrency, "Requests in flight (closed loop) / batch (offline).");
  flags.AddDouble("rate", &rate, "Poisson arrival rate in requests/s (0: closed loop).");
  flags.AddInt("requests", &requests, "Requests to send.");
  flags.AddInt("prompt-len", &prompt_len, "Prompt tokens per request.");
  flags.AddInt("output-len", &output_len, "Output tokens per request.");
  flags.AddInt("vocab", &vocab, "Prompt token ids are drawn below this.");
  flags.AddInt("shared-prefix", &shared_prefix, "Served: the first N prompt tokens are the same in every request.");
  flags.AddInt("turns", &turns, "Served: requests are conversations of this many turns, each turn's "
               "prompt the previous one's and --prompt-len more.");
  flags.AddInt("long-every", &long_every,
               "Served: every K-th request (the K-th, 2K-th, ...) has a --long-prompt-len prompt "
               "(0: none).");
  flags.AddInt("long-prompt-len", &long_prompt_len, "Prompt tokens of the long requests.");
  flags.AddInt("threads", &threads, "Offline: CPU threads per rank (0: cores / ranks here).");
  flags.AddInt("tp", &tp, "Offline under mpirun: attention TP size (the rest is attention DP).");
  flags.ParseOrExit(argc, argv);

  if (offline) {
    // Under mpirun the engine spans the ranks (sequences spread over the attention-DP groups).
    std::unique_ptr<moe::Communicator> world = moe::MakeSelfCommunicator();
    int local_ranks = 1;
    if (moe::MpiRuntime::LaunchedByMpi()) {
      if (!moe::MpiRuntime::Init(&argc, &argv).ok()) return 1;
      world = std::move(*moe::MakeMpiWorldCommunicator());
      if (const char* v = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) local_ranks = std::atoi(v);
    }
    const bool leader = world->rank() == 0;
    moe::cpu::SetNumThreads(
        threads > 0 ? static_cast<int>(threads)
                    : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) /
                                      std::max(1, local_ranks)));
    auto config = moe::LoadModelConfig(model);
    if (!config.ok()) return 1;
    moe::EngineOptions eo;
    eo.block_size = 64;
    eo.kv_blocks = *moe::KvCache::BlocksForBudget(*config, 64, 512ull << 20);
    auto ctx = moe::ParallelContext::Create(*config, std::move(world), static_cast<int>(tp));
    if (!ctx.ok()) {
      std::fprintf(stderr, "%s\n", std::string(ctx.status().message()).c_str());
      return 1;
    }
    const int ranks = (*ctx)->plan().world_size();
    auto engine = moe::Engine::Load(model, std::move(*ctx), eo);
    if (!engine.ok()) {
      std::fprintf(stderr, "%s\n", std::string(engine.status().message()).c_str());
      return 1;
    }
    moe::BlockAllocator alloc((*engine)->num_blocks());
    moe::GenerateOptions g;
    g.max_new_tokens = output_len;
    const auto t0 = Clock::now();
    int64_t tokens = 0;
    for (int64_t first = 0; first < requests; first += concurrency) {
      std::vector<std::vector<int32_t>> prompts;
      for (int64_t i = first; i < std::min(requests, first + concurrency); ++i) {
        prompts.push_back(PromptFor(i, prompt_len, vocab));
      }
      auto out = moe::GenerateGreedyBatch(**engine, alloc, prompts, g);
      if (!out.ok()) return 1;
      for (const auto& o : *out) tokens += static_cast<int64_t>(o.tokens.size());
    }
    const double dt = Seconds(t0, Clock::now());
    if (leader) {
      std::printf("machine: %s\n", moe::Describe(moe::ReadMachineInfo()).c_str());
      std::printf(
          "offline: %d ranks (TP %lld), %lld requests, batch %lld, %lld+%lld tokens each: "
          "%.1f output tokens/s (%.2f s)\n",
          ranks, static_cast<long long>(tp), static_cast<long long>(requests),
          static_cast<long long>(concurrency), static_cast<long long>(prompt_len),
          static_cast<long long>(output_len), tokens / dt, dt);
    }
    return 0;
  }

  if (turns < 1 || shared_prefix < 0 || long_every < 0 || (long_every > 0 && long_prompt_len < 1)) {
    std::fprintf(stderr,
                 "load_generator: --turns must be >= 1, --shared-prefix and --long-every >= 0, "
                 "and --long-every needs --long-prompt-len\n");
    return 2;
  }
  auto is_long = [&](int64_t i) { return long_every > 0 && i % long_every == long_every - 1; };
  // Request i's prompt: conversation i / turns at turn i % turns.
  auto prompt_of = [&](int64_t i) {
    if (is_long(i)) return PromptFor(i, long_prompt_len, vocab, shared_prefix);
    return PromptFor(i / turns, (i % turns + 1) * prompt_len, vocab, shared_prefix);
  };
  auto channel = grpc::CreateChannel(server, grpc::InsecureChannelCredentials());
  auto stub = moe::v1::Inference::NewStub(channel);
  std::mutex mu;
  std::vector<double> ttft, itl, latency;
  std::vector<double> class_ttft[2], class_itl[2];  // short, long prompts
  std::atomic<int64_t> next{0}, tokens{0}, failures{0};
  // A finished request's figures (or a failure).
  auto record = [&](int64_t i, bool ok, Clock::time_point start, double my_ttft,
                    const std::vector<double>& my_itl, int64_t n) {
    if (!ok) {
      ++failures;
      return;
    }
    tokens += n;
    std::lock_guard<std::mutex> lock(mu);
    ttft.push_back(my_ttft);
    itl.insert(itl.end(), my_itl.begin(), my_itl.end());
    class_ttft[is_long(i)].push_back(my_ttft);
    class_itl[is_long(i)].insert(class_itl[is_long(i)].end(), my_itl.begin(), my_itl.end());
    latency.push_back(Seconds(start, Clock::now()));
  };
  // One streamed /v1/completions request: event times and the completion tokens of its usage.
  auto run_http = [&](int64_t i) {
    const auto prompt = prompt_of(i);
    const size_t colon = http.rfind(':');
    httplib::Client cli(http.substr(0, colon), std::stoi(http.substr(colon + 1)));
    cli.set_read_timeout(600, 0);
    cli.set_tcp_nodelay(true);
    const nlohmann::json body = {{"prompt", prompt},           {"max_tokens", output_len},
                                 {"temperature", 0},           {"ignore_eos", true},
                                 {"stream", true},             {"stream_options", {{"include_usage", true}}},
                                 // Random weights pick many special ids (the padding of the
                                 // vocabulary): kept, every token has text and so an event.
                                 {"skip_special_tokens", false}};
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    const auto start = Clock::now();
    auto last = start;
    std::vector<double> my_itl;
    double my_ttft = -1;
    int64_t n = 0;
    std::string buffer;
    req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
      buffer.append(data, len);
      for (size_t end; (end = buffer.find("\n\n")) != std::string::npos; buffer.erase(0, end + 2)) {
        const std::string event = buffer.substr(0, end);
        if (event.rfind("data: {", 0) != 0) continue;
        const auto j = nlohmann::json::parse(event.substr(6), nullptr, false);
        if (j.is_discarded()) continue;
        if (j.contains("usage") && j["usage"].is_object()) n = j["usage"].value("completion_tokens", 0);
        if (!j.contains("choices") || j["choices"].empty()) continue;
        const auto now = Clock::now();
        if (my_ttft < 0) {
          my_ttft = Seconds(start, now);
        } else {
          my_itl.push_back(Seconds(last, now));
        }
        last = now;
      }
      return true;
    };
    auto res = cli.send(req);
    record(i, res && res->status == 200 && n > 0, start, my_ttft, my_itl, n);
  };
  auto run_one = [&](int64_t i) {
    if (!http.empty()) return run_http(i);
    moe::v1::GenerateRequest req;
    const auto prompt = prompt_of(i);
    req.mutable_prompt_ids()->Add(prompt.begin(), prompt.end());
    req.set_max_tokens(static_cast<int32_t>(output_len));
    req.set_ignore_eos(true);
    req.mutable_sampling()->set_temperature(0.0f);
    grpc::ClientContext ctx;
    const auto start = Clock::now();
    auto reader = stub->Generate(&ctx, req);
    moe::v1::GenerateResponse resp;
    auto last = start;
    std::vector<double> my_itl;
    double my_ttft = -1;
    int64_t n = 0;
    while (reader->Read(&resp)) {
      const auto now = Clock::now();
      const int k = resp.token_ids_size();
      if (k == 0) continue;
      if (my_ttft < 0) {
        my_ttft = Seconds(start, now);
        for (int j = 1; j < k; ++j) my_itl.push_back(0.0);
      } else {
        for (int j = 0; j < k; ++j) my_itl.push_back(Seconds(last, now) / k);
      }
      last = now;
      n += k;
    }
    record(i, reader->Finish().ok(), start, my_ttft, my_itl, n);
  };
  const auto t0 = Clock::now();
  std::vector<std::thread> workers;
  if (rate > 0) {
    std::mt19937_64 rng(1);
    std::exponential_distribution<double> gap(rate);
    for (int64_t i = 0; i < requests; ++i) {
      workers.emplace_back(run_one, i);
      std::this_thread::sleep_for(std::chrono::duration<double>(gap(rng)));
    }
  } else {
    for (int64_t c = 0; c < concurrency; ++c) {
      workers.emplace_back([&] {  // a conversation's turns in order, on one client
        for (int64_t conv = next++; conv * turns < requests; conv = next++) {
          for (int64_t i = conv * turns; i < std::min(requests, (conv + 1) * turns); ++i) run_one(i);
        }
      });
    }
  }
  for (auto& w : workers) w.join();
  const double dt = Seconds(t0, Clock::now());
  std::printf("machine: %s\n", moe::Describe(moe::ReadMachineInfo()).c_str());
  std::printf(
      "served (%s): %lld requests (%s), %lld+%lld tokens each%s, %lld failed: %.1f output "
      "tokens/s (%.2f s)\n",
      http.empty() ? "gRPC" : "HTTP, OpenAI API", static_cast<long long>(requests),
      rate > 0 ? ("Poisson " + std::to_string(rate) + " req/s").c_str()
               : ("concurrency " + std::to_string(concurrency)).c_str(),
      static_cast<long long>(prompt_len), static_cast<long long>(output_len),
      (turns > 1 || shared_prefix > 0)
          ? (" (" + std::to_string(shared_prefix) + " shared, " + std::to_string(turns) +
             "-turn conversations)").c_str()
          : "",
      static_cast<long long>(failures.load()), tokens / dt, dt);
  std::printf("  TTFT p50 %.1f ms p99 %.1f ms | ITL p50 %.1f ms p99 %.1f ms | latency p50 %.2f s\n",
              1e3 * Percentile(ttft, 0.5), 1e3 * Percentile(ttft, 0.99), 1e3 * Percentile(itl, 0.5),
              1e3 * Percentile(itl, 0.99), Percentile(latency, 0.5));
  if (long_every > 0) {
    for (int c = 0; c < 2; ++c) {
      std::printf(
          "  %s prompts (%lld tokens, %zu requests): TTFT p50 %.1f ms p99 %.1f ms | ITL p50 "
          "%.1f ms p90 %.1f ms p99 %.1f ms\n",
          c == 0 ? "short" : "long", static_cast<long long>(c == 0 ? prompt_len : long_prompt_len),
          class_ttft[c].size(), 1e3 * Percentile(class_ttft[c], 0.5),
          1e3 * Percentile(class_ttft[c], 0.99), 1e3 * Percentile(class_itl[c], 0.5),
          1e3 * Percentile(class_itl[c], 0.9), 1e3 * Percentile(class_itl[c], 0.99));
    }
  }
  return failures > 0 ? 1 : 0;
}
