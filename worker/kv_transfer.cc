#include "worker/kv_transfer.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace moe {
namespace {

// A block's rows of every layer, in push order.
int64_t RowsInBlock(int64_t tokens, int64_t block_size, size_t i) {
  return std::min<int64_t>(block_size, tokens - static_cast<int64_t>(i) * block_size);
}

int64_t BlocksFor(int64_t tokens, int64_t block_size) {
  return (tokens + block_size - 1) / block_size;
}

// Why `blocks` of `cache` cannot hold positions [0, tokens) ("" when they can).
template <class Blocks>
std::string CheckBlocks(const Blocks& blocks, int64_t tokens, const KvCache& cache) {
  const int64_t n = static_cast<int64_t>(blocks.size());
  if (tokens < 1 || n != BlocksFor(tokens, cache.block_size())) {
    return absl::StrCat(n, " blocks do not cover ", tokens, " tokens");
  }
  for (int32_t b : blocks) {
    if (b < 0 || b >= cache.num_blocks()) {
      return absl::StrCat("block ", b, " is outside this cache's ", cache.num_blocks(), " blocks");
    }
  }
  return "";
}

// Why a push's header cannot be written into `cache` ("" when it can).
std::string CheckHeader(const moe::v1::KvPushHeader& h, const KvCache& cache,
                        const std::string& session) {
  if (h.session() != session) {
    return absl::StrCat("the push is for session ", h.session(), ", this rank serves ", session);
  }
  if (h.block_size() != cache.block_size() || h.layers() != cache.layers() ||
      h.dim() != cache.dim()) {
    return absl::StrCat("the push's shape (block_size ", h.block_size(), ", layers ", h.layers(),
                        ", dim ", h.dim(), ") differs from this cache's (", cache.block_size(),
                        ", ", cache.layers(), ", ", cache.dim(), ")");
  }
  return CheckBlocks(h.blocks(), h.tokens(), cache);
}

}  // namespace

int64_t KvTransferBytes(const KvCache& cache, int64_t tokens) {
  return tokens * cache.layers() * cache.dim() * static_cast<int64_t>(sizeof(float));
}

class KvTransferServer::Service final : public moe::v1::KvTransfer::Service {
 public:
  Service(KvCache* cache, std::string session) : cache_(cache), session_(std::move(session)) {}

  grpc::Status Push(grpc::ServerContext*, grpc::ServerReader<moe::v1::KvChunk>* reader,
                    moe::v1::KvPushResult* result) override {
    moe::v1::KvChunk chunk;
    if (!reader->Read(&chunk) || !chunk.has_header()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a push starts with its header");
    }
    const moe::v1::KvPushHeader header = chunk.header();
    if (const std::string why = CheckHeader(header, *cache_, session_); !why.empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("KV of sequence ", header.seq_id(), ": ", why));
    }
    const int64_t row_bytes = cache_->dim() * static_cast<int64_t>(sizeof(float));
    int64_t written = 0;
    for (int i = 0; i < header.blocks_size(); ++i) {
      const int64_t rows =
          RowsInBlock(header.tokens(), header.block_size(), static_cast<size_t>(i));
      if (!reader->Read(&chunk) ||
          static_cast<int64_t>(chunk.rows().size()) != rows * row_bytes * cache_->layers()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            absl::StrCat("KV of sequence ", header.seq_id(), ": block ", i,
                                         " of the push is missing or not ", rows, " rows of ",
                                         cache_->layers(), " layers"));
      }
      std::lock_guard<std::mutex> lock(mu_);
      const char* from = chunk.rows().data();
      for (int64_t l = 0; l < cache_->layers(); ++l) {
        std::memcpy(cache_->Row(l, header.blocks(i), 0), from,
                    static_cast<size_t>(rows * row_bytes));
        from += rows * row_bytes;
      }
      written += rows * row_bytes * cache_->layers();
    }
    if (reader->Read(&chunk)) {
      return grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("KV of sequence ", header.seq_id(), ": more chunks than its blocks"));
    }
    bytes_ += written;
    result->set_bytes(written);
    return grpc::Status::OK;
  }

  void Fence() { std::lock_guard<std::mutex> lock(mu_); }
  int64_t bytes() const { return bytes_.load(); }

 private:
  KvCache* const cache_;
  const std::string session_;
  std::mutex mu_;  // held while a block is written; Fence orders a step after it
  std::atomic<int64_t> bytes_{0};
};

absl::StatusOr<std::unique_ptr<KvTransferServer>> KvTransferServer::Start(const std::string& listen,
                                                                          KvCache* cache,
                                                                          std::string session,
                                                                          const TlsPem* tls) {
  if (cache->layout().window_groups() > 0) {
    return absl::UnimplementedError(
        "KV transfer between worker groups: this model's window layer groups keep several block "
        "tables a sequence, which a push does not carry yet");
  }
  std::unique_ptr<KvTransferServer> s(new KvTransferServer());
  s->service_ = std::make_unique<Service>(cache, std::move(session));
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (tls != nullptr) {
    grpc::SslServerCredentialsOptions ssl(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_key_cert_pairs.push_back({tls->key, tls->cert});
    ssl.pem_root_certs = tls->ca;
    credentials = grpc::SslServerCredentials(ssl);
  }
  builder.AddListeningPort(listen, credentials, &s->port_);
  builder.SetMaxReceiveMessageSize(1 << 30);  // one block of every layer per message
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on --kv-listen ", listen));
  }
  return s;
}

KvTransferServer::~KvTransferServer() {
  if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
}

void KvTransferServer::Fence() { service_->Fence(); }

int64_t KvTransferServer::bytes_received() const { return service_->bytes(); }

moe::v1::KvTransfer::Stub& KvPusher::StubFor(const std::string& address) {
  auto& stub = stubs_[address];
  if (!stub) {
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(1 << 30);
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
    if (tls_) {
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = tls_->ca;
      ssl.pem_private_key = tls_->key;
      ssl.pem_cert_chain = tls_->cert;
      credentials = grpc::SslCredentials(ssl);
    }
    stub = moe::v1::KvTransfer::NewStub(grpc::CreateCustomChannel(address, credentials, args));
  }
  return *stub;
}

absl::StatusOr<int64_t> KvPusher::Push(const std::string& address, const KvCache& cache,
                                       moe::v1::KvPushHeader header,
                                       const std::vector<int32_t>& blocks, absl::Duration timeout) {
  const int64_t tokens = header.tokens();
  if (const std::string why = CheckBlocks(blocks, tokens, cache); !why.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("KV of sequence ", header.seq_id(), ": ", why));
  }
  header.set_block_size(static_cast<int32_t>(cache.block_size()));
  header.set_layers(static_cast<int32_t>(cache.layers()));
  header.set_dim(cache.dim());
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  moe::v1::KvPushResult result;
  auto writer = StubFor(address).Push(&ctx, &result);
  moe::v1::KvChunk chunk;
  *chunk.mutable_header() = std::move(header);
  bool sent = writer->Write(chunk);
  chunk.Clear();
  const int64_t row_bytes = cache.dim() * static_cast<int64_t>(sizeof(float));
  for (size_t i = 0; sent && i < blocks.size(); ++i) {
    const int64_t rows = RowsInBlock(tokens, cache.block_size(), i);
    std::string* bytes = chunk.mutable_rows();
    bytes->resize(static_cast<size_t>(rows * row_bytes * cache.layers()));
    char* to = bytes->data();
    for (int64_t l = 0; l < cache.layers(); ++l) {
      std::memcpy(to, cache.Row(l, blocks[i], 0), static_cast<size_t>(rows * row_bytes));
      to += rows * row_bytes;
    }
    sent = writer->Write(chunk);
  }
  if (sent) writer->WritesDone();
  const grpc::Status status = writer->Finish();
  if (!status.ok()) {
    return absl::UnavailableError(
        absl::StrCat("KV transfer to ", address, ": ", status.error_message()));
  }
  return result.bytes();
}

}  // namespace moe
