// Mutual TLS for the TCP mesh between ranks: every rank presents the cluster certificate and
// accepts a peer only if the cluster CA signed the peer's. A connection that fails the handshake
// (no certificate, another CA's, plaintext) is closed; the mesh goes on waiting for its ranks.
// Peers are named by rank, not host, so certificates are checked against the CA only: the cluster
// CA must sign the cluster's members and nothing else.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tls_files.h"

struct ssl_ctx_st;
struct ssl_st;

namespace moe {

class MeshTls {
 public:
  // Errors name the file (and OpenSSL's reason).
  static absl::StatusOr<std::unique_ptr<MeshTls>> Create(const TlsFiles& files);
  ~MeshTls();

  // The handshake on a connected blocking socket (bounded by `timeout`), as the side that
  // connected (`client`) or accepted; the session, or why the peer was refused.
  absl::StatusOr<ssl_st*> Handshake(int fd, bool client, absl::Duration timeout) const;

 private:
  explicit MeshTls(ssl_ctx_st* ctx) : ctx_(ctx) {}
  ssl_ctx_st* ctx_;
};

// OpenSSL's queued errors as text (and clears them).
std::string OpenSslErrors();

}  // namespace moe
