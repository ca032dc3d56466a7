// moe-client: a command-line client of moe.v1.Inference and grpc.health.v1.
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/cli.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "moe/v1/inference.grpc.pb.h"

namespace {

const char* CodeName(grpc::StatusCode c) {
  switch (c) {
    case grpc::OK:
      return "OK";
    case grpc::CANCELLED:
      return "CANCELLED";
    case grpc::UNKNOWN:
      return "UNKNOWN";
    case grpc::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::ABORTED:
      return "ABORTED";
    case grpc::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::INTERNAL:
      return "INTERNAL";
    case grpc::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "?";
  }
}

int Fail(const grpc::Status& s) {
  std::fprintf(stderr, "moe-client: %s: %s\n", CodeName(s.error_code()), s.error_message().c_str());
  return 1;
}

int Usage(const std::string& what) {
  std::fprintf(stderr, "moe-client: %s\n", what.c_str());
  return 2;
}

bool ParseIds(const std::string& text, std::vector<int32_t>* ids) {
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &id)) return false;
    ids->push_back(id);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::string server = "localhost:50051", prompt, prompt_ids, stop_ids, print = "auto", chat, system;
  int64_t max_tokens = 16, top_k = 0, seed = -1, timeout_s = 0;
  double temperature = 0.0, top_p = 1.0;
  bool health = false, info = false, ignore_eos = false, keep_special = false;
  moe::FlagParser flags(
      "moe-client",
      "Streams a generation from a moe-coordinator: the text (for --prompt and --chat) or the token\n"
      "ids (for --prompt-ids) go to stdout as they arrive, the finish reason and usage to stderr. Errors\n"
      "print the gRPC status code and message and exit 1. --health exits 0 only when the server\n"
      "reports SERVING; --info prints the model.");
  flags.AddString("server", &server, "Coordinator address HOST:PORT.");
  flags.AddString("prompt", &prompt, "Prompt text (encoded by the server's tokenizer).");
  flags.AddString("prompt-ids", &prompt_ids, "Comma-separated prompt token ids.");
  flags.AddString("chat", &chat, "A user message, sent as a conversation (the server applies the "
                  "model's chat template).");
  flags.AddString("system", &system, "With --chat: a system message before the user's.");
  flags.AddString("print", &print, "What to stream to stdout: text, ids, or auto (text for --prompt).");
  flags.AddBool("keep-special-tokens", &keep_special, "Keep special tokens (EOS...) in the text.");
  flags.AddInt("max-tokens", &max_tokens, "Tokens to generate at most.");
  flags.AddDouble("temperature", &temperature, "Sampling temperature (0: greedy).");
  flags.AddDouble("top-p", &top_p, "Nucleus sampling mass in (0, 1].");
  flags.AddInt("top-k", &top_k, "Keep the k most likely tokens (0: all).");
  flags.AddInt("seed", &seed, "Sampling seed (-1: the server picks one).");
  flags.AddString("stop-ids", &stop_ids, "Comma-separated token ids that end the generation.");
  flags.AddBool("ignore-eos", &ignore_eos, "Keep going after the model's EOS token.");
  flags.AddInt("timeout-s", &timeout_s, "Deadline for the call in seconds (0: none).");
  flags.AddBool("health", &health, "Check grpc.health.v1 and exit 0 only if SERVING.");
  flags.AddBool("info", &info, "Print the served model's description.");
  const char* env_key = std::getenv("MOE_API_KEY");
  std::string api_key = env_key ? env_key : "";
  flags.AddString("api-key", &api_key,
                  "API key, sent as `authorization: Bearer KEY` (default: $MOE_API_KEY).");
  std::string tls_ca, tls_cert, tls_key;
  flags.AddString("tls-ca", &tls_ca, "PEM CA that signed the server's certificate: use TLS.");
  flags.AddString("tls-cert", &tls_cert, "PEM client certificate, for a server that wants mTLS.");
  flags.AddString("tls-key", &tls_key, "PEM private key of --tls-cert.");
  flags.ParseOrExit(argc, argv);

  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!tls_ca.empty() || !tls_cert.empty()) {
    grpc::SslCredentialsOptions ssl;
    for (auto [flag, path, out] : {std::tuple{"--tls-ca", &tls_ca, &ssl.pem_root_certs},
                                   std::tuple{"--tls-cert", &tls_cert, &ssl.pem_cert_chain},
                                   std::tuple{"--tls-key", &tls_key, &ssl.pem_private_key}}) {
      if (path->empty()) continue;
      std::ifstream in(*path);
      std::stringstream text;
      text << in.rdbuf();
      if (!in) return Usage(std::string(flag) + ": cannot read " + *path);
      *out = text.str();
    }
    credentials = grpc::SslCredentials(ssl);
  }
  auto channel = grpc::CreateChannel(server, credentials);
  grpc::ClientContext ctx;
  if (!api_key.empty()) ctx.AddMetadata("authorization", "Bearer " + api_key);
  if (timeout_s > 0) {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_s));
  } else if (health || info) {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  }

  if (health) {
    auto stub = grpc::health::v1::Health::NewStub(channel);
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    const grpc::Status s = stub->Check(&ctx, req, &resp);
    if (!s.ok()) return Fail(s);
    const std::string name =
        grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status());
    std::printf("%s\n", name.c_str());
    return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
  }
  auto stub = moe::v1::Inference::NewStub(channel);
  if (info) {
    moe::v1::ModelInfo resp;
    const grpc::Status s = stub->GetModelInfo(&ctx, moe::v1::GetModelInfoRequest(), &resp);
    if (!s.ok()) return Fail(s);
    std::printf("%s", resp.DebugString().c_str());
    return 0;
  }

  moe::v1::GenerateRequest req;
  std::vector<int32_t> ids, stops;
  if (!ParseIds(prompt_ids, &ids)) return Usage("--prompt-ids: expected comma-separated integers");
  if (!ParseIds(stop_ids, &stops)) return Usage("--stop-ids: expected comma-separated integers");
  if (!system.empty() && chat.empty()) return Usage("--system needs --chat");
  if (print == "auto") print = prompt.empty() && chat.empty() ? "ids" : "text";
  if (print != "text" && print != "ids") return Usage("--print: expected text, ids or auto");
  req.mutable_prompt_ids()->Add(ids.begin(), ids.end());
  req.set_prompt(prompt);
  for (const auto& [role, content] : {std::pair<const char*, const std::string&>{"system", system},
                                      {"user", chat}}) {
    if (content.empty()) continue;
    moe::v1::ChatMessage* m = req.add_messages();
    m->set_role(role);
    m->set_content(content);
  }
  req.set_skip_special_tokens(!keep_special);
  req.mutable_stop_token_ids()->Add(stops.begin(), stops.end());
  req.set_max_tokens(static_cast<int32_t>(max_tokens));
  req.set_ignore_eos(ignore_eos);
  moe::v1::SamplingParams* sp = req.mutable_sampling();
  sp->set_temperature(static_cast<float>(temperature));
  sp->set_top_p(static_cast<float>(top_p));
  sp->set_top_k(static_cast<int32_t>(top_k));
  if (seed >= 0) sp->set_seed(static_cast<uint64_t>(seed));

  auto reader = stub->Generate(&ctx, req);
  moe::v1::GenerateResponse resp;
  bool any = false;
  moe::v1::GenerateResponse last;
  while (reader->Read(&resp)) {
    if (print == "text") {
      std::fwrite(resp.text().data(), 1, resp.text().size(), stdout);
      any = any || !resp.text().empty();
    } else {
      for (int32_t t : resp.token_ids()) {
        std::printf("%s%d", any ? " " : "", t);
        any = true;
      }
    }
    std::fflush(stdout);
    if (resp.finish_reason() != moe::v1::FINISH_REASON_UNSPECIFIED) last = resp;
  }
  if (any) std::printf("\n");
  std::fflush(stdout);  // the output before the summary on stderr, when both go to one place
  const grpc::Status s = reader->Finish();
  if (!s.ok()) return Fail(s);
  std::fprintf(stderr, "finish_reason=%s prompt_tokens=%d completion_tokens=%d\n",
               moe::v1::FinishReason_Name(last.finish_reason()).c_str(),
               last.usage().prompt_tokens(), last.usage().completion_tokens());
  return 0;
}
