#include "parallel/mesh_tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "absl/strings/str_cat.h"

namespace moe {

std::string OpenSslErrors() {
  std::string text;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    absl::StrAppend(&text, text.empty() ? "" : "; ", buf);
  }
  return text.empty() ? "no reason given" : text;
}

absl::StatusOr<std::unique_ptr<MeshTls>> MeshTls::Create(const TlsFiles& files) {
  if (files.cert.empty() || files.key.empty() || files.ca.empty()) {
    return absl::InvalidArgumentError("--cluster-cert, --cluster-key and --cluster-ca go together");
  }
  // OpenSSL writes to a socket with write(2): a peer that went away would raise SIGPIPE and end
  // the process. A rank reports the broken link as an error instead.
  signal(SIGPIPE, SIG_IGN);
  SSL_CTX* ctx = SSL_CTX_new(TLS_method());
  if (ctx == nullptr) return absl::InternalError("SSL_CTX_new: " + OpenSslErrors());
  std::unique_ptr<MeshTls> tls(new MeshTls(ctx));
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (SSL_CTX_use_certificate_chain_file(ctx, files.cert.c_str()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cluster-cert ", files.cert, ": ", OpenSslErrors()));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, files.key.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cluster-key ", files.key, ": ", OpenSslErrors()));
  }
  if (SSL_CTX_load_verify_locations(ctx, files.ca.c_str(), nullptr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cluster-ca ", files.ca, ": ", OpenSslErrors()));
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  return tls;
}

MeshTls::~MeshTls() { SSL_CTX_free(ctx_); }

absl::StatusOr<ssl_st*> MeshTls::Handshake(int fd, bool client, absl::Duration timeout) const {
  timeval tv{};
  tv.tv_sec = absl::ToInt64Seconds(timeout);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  SSL* ssl = SSL_new(ctx_);
  if (ssl == nullptr) return absl::InternalError("SSL_new: " + OpenSslErrors());
  SSL_set_fd(ssl, fd);
  const int rc = client ? SSL_connect(ssl) : SSL_accept(ssl);
  if (rc != 1) {
    const long verify = SSL_get_verify_result(ssl);
    std::string why = OpenSslErrors();
    if (verify != X509_V_OK) {
      why = absl::StrCat("certificate not accepted: ", X509_verify_cert_error_string(verify));
    }
    SSL_free(ssl);
    return absl::UnauthenticatedError(absl::StrCat("TLS handshake failed: ", why));
  }
  tv = timeval{};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  return ssl;
}

}  // namespace moe
