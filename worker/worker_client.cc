#include "worker/worker_client.h"

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace moe {

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

namespace {

std::shared_ptr<grpc::Channel> ControlPlaneChannel(const std::string& address, const TlsPem* tls,
                                                   const std::string& tls_name) {
  if (tls == nullptr) return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = tls->ca;
  ssl.pem_private_key = tls->key;
  ssl.pem_cert_chain = tls->cert;
  grpc::ChannelArguments args;
  if (!tls_name.empty()) args.SetSslTargetNameOverride(tls_name);
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(ssl), args);
}

}  // namespace

CoordinatorClient::CoordinatorClient(const std::string& address, const TlsPem* tls,
                                     const std::string& tls_name)
    : channel_(ControlPlaneChannel(address, tls, tls_name)),
      stub_(moe::v1::Cluster::NewStub(channel_)) {}

CoordinatorClient::~CoordinatorClient() { StopHeartbeats(); }

absl::StatusOr<moe::v1::RegisterResponse> CoordinatorClient::Register(
    const moe::v1::RegisterRequest& request, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::Duration backoff = absl::Milliseconds(100);
  absl::Time next_warning = absl::Now() + absl::Seconds(2);
  while (true) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(deadline));
    moe::v1::RegisterResponse response;
    const grpc::Status s = stub_->Register(&ctx, request, &response);
    if (s.ok()) return response;
    // Unreachable coordinator: try again until the deadline. Anything else is its answer.
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE || absl::Now() + backoff > deadline) {
      return absl::Status(FromGrpc(s).code(),
                          absl::StrCat("registering with the coordinator: ", s.error_message()));
    }
    if (absl::Now() >= next_warning) {  // a wrong address or certificate shows here
      MOE_LOG(WARNING) << "coordinator not reachable yet (" << s.error_message()
                       << "), retrying";
      next_warning = absl::Now() + absl::Seconds(30);
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(2));
  }
}

absl::Status CoordinatorClient::ReportReady(const moe::v1::ReadyRequest& request) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  moe::v1::ReadyResponse response;
  return FromGrpc(stub_->ReportReady(&ctx, request, &response));
}

void CoordinatorClient::StartHeartbeats(const std::string& session, int rank,
                                        absl::Duration interval, absl::Duration lost_after,
                                        std::function<void(moe::v1::HeartbeatRequest*)> progress,
                                        std::function<void(const absl::Status&)> on_end) {
  heartbeat_ = std::thread([this, session, rank, interval, lost_after, progress, on_end] {
    absl::Time last_ok = absl::Now();
    while (!stop_) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + interval));
      moe::v1::HeartbeatRequest req;
      req.set_session(session);
      req.set_rank(rank);
      if (progress) progress(&req);
      moe::v1::HeartbeatResponse resp;
      const grpc::Status s = stub_->Heartbeat(&ctx, req, &resp);
      if (s.ok() && resp.shutdown()) {
        on_end(absl::CancelledError("the coordinator is shutting down"));
        return;
      }
      if (s.ok()) {
        last_ok = absl::Now();
      } else if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
        on_end(absl::AbortedError(absl::StrCat("session ended: ", s.error_message())));
        return;
      } else if (absl::Now() - last_ok > lost_after) {
        on_end(absl::UnavailableError(absl::StrCat("coordinator unreachable for ",
                                                   absl::FormatDuration(lost_after), ": ",
                                                   s.error_message())));
        return;
      }
      for (absl::Duration slept; slept < interval && !stop_; slept += absl::Milliseconds(50)) {
        absl::SleepFor(absl::Milliseconds(50));
      }
    }
  });
}

void CoordinatorClient::StopHeartbeats() {
  stop_ = true;
  if (heartbeat_.joinable()) heartbeat_.join();
}

std::unique_ptr<grpc::ClientReaderWriter<moe::v1::StepResult, moe::v1::StepPlan>>
CoordinatorClient::OpenStepStream(grpc::ClientContext* context, const std::string& session) {
  context->AddMetadata(kSessionMetadata, session);
  return stub_->Step(context);
}

}  // namespace moe
