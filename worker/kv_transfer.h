// Prefill/decode disaggregation: a sequence's latent KV moves once, from the main group's rank
// that computed it to each rank of the decode group that continues it, over gRPC
// (moe.v1.KvTransfer in proto/moe/v1/cluster.proto).
//   main-group rank:  KvPusher::Push — positions [0, tokens) of its blocks, every cache layer;
//   decode rank:      KvTransferServer — writes a push into the blocks the coordinator reserved
//                     for the sequence there (no step reads them before the push has ended and
//                     the coordinator has heard so from the main group).
// Only the layers' rows travel: tokens × layers × dim float32 values (the latent size), not the
// unused rows of a last, partly filled block. With the cluster's TLS identity (--cluster-cert)
// both sides are mutual TLS: each must present a certificate the cluster CA signed, and the
// receiver's must name the host it is reached at.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tls_files.h"
#include "model/kv_cache.h"
#include "moe/v1/cluster.grpc.pb.h"

namespace moe {

// Bytes of positions [0, tokens) of every layer of `cache`: what a push carries.
int64_t KvTransferBytes(const KvCache& cache, int64_t tokens);

class KvTransferServer {
 public:
  // Listens on `listen` (HOST:PORT; port 0 picks one) and writes into `cache` the pushes meant
  // for `session` (a push for another session — a stale plan — is refused). Models whose layers
  // keep several block tables (window layer groups) are refused. `tls`: mutual TLS.
  static absl::StatusOr<std::unique_ptr<KvTransferServer>> Start(const std::string& listen,
                                                                 KvCache* cache,
                                                                 std::string session,
                                                                 const TlsPem* tls = nullptr);
  ~KvTransferServer();

  int port() const { return port_; }
  // Before a step reads the cache: orders the step after every push written so far (pushes are
  // written on gRPC's threads).
  void Fence();
  int64_t bytes_received() const;

 private:
  class Service;
  KvTransferServer() = default;

  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

// The sending side: one channel per decode rank, kept between pushes.
class KvPusher {
 public:
  // `tls`: mutual TLS with the receivers (their certificates must name the host of `address`).
  explicit KvPusher(const TlsPem* tls = nullptr)
      : tls_(tls ? std::optional<TlsPem>(*tls) : std::nullopt) {}
  // Sends positions [0, header.tokens()) of `blocks` (this cache's) to the rank at `address`,
  // into its `header.blocks()`; fills the header's shape from `cache`. Returns the bytes the
  // receiver wrote (an error names the peer and its answer).
  absl::StatusOr<int64_t> Push(const std::string& address, const KvCache& cache,
                               moe::v1::KvPushHeader header, const std::vector<int32_t>& blocks,
                               absl::Duration timeout = absl::Seconds(120));

 private:
  moe::v1::KvTransfer::Stub& StubFor(const std::string& address);
  const std::optional<TlsPem> tls_;
  std::map<std::string, std::unique_ptr<moe::v1::KvTransfer::Stub>> stubs_;
};

}  // namespace moe
