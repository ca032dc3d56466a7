// A host-memory Communicator over a full mesh of TCP connections, for ranks started without an
// MPI launcher (e.g. one Kubernetes pod per rank): each rank listens, learns every rank's address
// from the coordinator, connects to the lower ranks and accepts the higher ones. Collectives are
// pairwise exchanges progressed with poll(), so large simultaneous sends cannot deadlock; the
// all-reduce gathers every contribution and sums in rank order (bit-identical on every rank).
// With a MeshTls, every link is mutual TLS 1.3 with the cluster CA (parallel/mesh_tls.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "parallel/communicator.h"
#include "parallel/mesh_tls.h"

namespace moe {

class TcpListener {
 public:
  // "host:port"; port 0 picks a free port. The host must be an address peers can reach.
  static absl::StatusOr<std::unique_ptr<TcpListener>> Listen(const std::string& host_port);
  ~TcpListener();
  const std::string& address() const { return address_; }  // with the port actually bound
  int fd() const { return fd_; }

 private:
  TcpListener() = default;
  int fd_ = -1;
  std::string address_;
};

// Connects rank `rank` to every address in `peers` (index = rank; its own entry is ignored);
// with `tls`, every link is mutual TLS with the cluster CA.
absl::StatusOr<std::unique_ptr<Communicator>> ConnectTcpMesh(int rank,
                                                             const std::vector<std::string>& peers,
                                                             TcpListener& listener,
                                                             absl::Duration timeout,
                                                             const MeshTls* tls = nullptr);

}  // namespace moe
