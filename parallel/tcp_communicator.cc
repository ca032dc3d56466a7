#include "parallel/tcp_communicator.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <numeric>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace moe {
namespace {

absl::Status Errno(const std::string& what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
}

absl::StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& hp) {
  const size_t colon = hp.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(hp.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("\"", hp, "\" is not HOST:PORT"));
  }
  return std::make_pair(hp.substr(0, colon), port);
}

absl::StatusOr<sockaddr_in> Resolve(const std::string& host, int port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  if (int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res); rc != 0 || res == nullptr) {
    return absl::NotFoundError(absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  sockaddr_in addr = *reinterpret_cast<sockaddr_in*>(res->ai_addr);
  freeaddrinfo(res);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  return addr;
}

void Tune(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// One peer's connection: a socket, and its TLS session when the mesh is mutual TLS. After the
// mesh is set up the socket is non-blocking and every transfer goes through Transfer().
struct Link {
  int fd = -1;
  SSL* ssl = nullptr;
};

// Try*: bytes moved now (0: it would block; `want` says for which poll event), or the error.
absl::StatusOr<size_t> TlsResult(const Link& l, int r, short* want, const char* what) {
  if (r > 0) return static_cast<size_t>(r);
  const int e = SSL_get_error(l.ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
    *want = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
    return 0;
  }
  if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0)) {
    return absl::UnavailableError("peer closed the connection");
  }
  if (e == SSL_ERROR_SYSCALL) return Errno(what);
  return absl::UnavailableError(absl::StrCat(what, ": ", OpenSslErrors()));
}

absl::StatusOr<size_t> TrySend(const Link& l, const char* p, size_t n, short* want) {
  if (l.ssl != nullptr) {
    ERR_clear_error();
    const int w = SSL_write(l.ssl, p, static_cast<int>(std::min<size_t>(n, 1 << 30)));
    return TlsResult(l, w, want, "TLS send to peer");
  }
  const ssize_t w = ::send(l.fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (w >= 0) return static_cast<size_t>(w);
  if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return Errno("send to peer");
  *want = POLLOUT;
  return 0;
}

absl::StatusOr<size_t> TryRecv(const Link& l, char* p, size_t n, short* want) {
  if (l.ssl != nullptr) {
    ERR_clear_error();
    const int r = SSL_read(l.ssl, p, static_cast<int>(std::min<size_t>(n, 1 << 30)));
    return TlsResult(l, r, want, "TLS receive from peer");
  }
  const ssize_t r = ::recv(l.fd, p, n, MSG_DONTWAIT);
  if (r == 0) return absl::UnavailableError("peer closed the connection");
  if (r > 0) return static_cast<size_t>(r);
  if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return Errno("receive from peer");
  *want = POLLIN;
  return 0;
}

// Sends `sn` bytes to `out` while receiving `rn` bytes from `in` (either may be nothing),
// progressing both, so that large simultaneous exchanges cannot deadlock.
absl::Status Transfer(const Link* out, const void* send, size_t sn, const Link* in, void* recv,
                      size_t rn) {
  const char* sp = static_cast<const char*>(send);
  char* rp = static_cast<char*>(recv);
  short want_out = POLLOUT, want_in = POLLIN;
  while (sn > 0 || rn > 0) {
    bool moved = false;
    if (sn > 0) {
      MOE_ASSIGN_OR_RETURN(const size_t w, TrySend(*out, sp, sn, &want_out));
      sp += w;
      sn -= w;
      moved |= w > 0;
    }
    if (rn > 0) {
      MOE_ASSIGN_OR_RETURN(const size_t r, TryRecv(*in, rp, rn, &want_in));
      rp += r;
      rn -= r;
      moved |= r > 0;
    }
    if (moved) continue;
    pollfd fds[2];
    nfds_t n = 0;
    if (sn > 0) fds[n++] = {out->fd, want_out, 0};
    if (rn > 0) fds[n++] = {in->fd, want_in, 0};
    if (::poll(fds, n, -1) < 0 && errno != EINTR) return Errno("poll");
  }
  return absl::OkStatus();
}

// The links of a mesh, shared by a communicator and the sub-groups split from it: operations
// are issued in the same program order on every rank, so sharing a link cannot mix messages up.
struct Mesh {
  std::vector<Link> links;  // by world rank; fd -1 for self
  ~Mesh() {
    for (Link& l : links) {
      if (l.ssl != nullptr) SSL_free(l.ssl);
      if (l.fd >= 0) ::close(l.fd);
    }
  }
};

class TcpCommunicator final : public Communicator {
 public:
  TcpCommunicator(std::shared_ptr<Mesh> mesh, std::vector<int> members, int rank)
      : mesh_(std::move(mesh)), members_(std::move(members)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(members_.size()); }
  const char* backend() const override { return "tcp"; }

  absl::Status AllReduceSum(float* data, size_t count) override { return Reduce(data, count); }
  absl::Status AllReduceSum(int64_t* data, size_t count) override { return Reduce(data, count); }
  // Every other rank sends its part to the root, which adds them in rank order.
  absl::Status ReduceSum(int64_t* data, size_t count, int root) override {
    const size_t bytes = count * sizeof(int64_t);
    if (rank_ != root) return Exchange(root, data, bytes, root, nullptr, 0);
    std::vector<int64_t> part(count);
    for (int r = 0; r < size(); ++r) {
      if (r == root) continue;
      MOE_RETURN_IF_ERROR(Exchange(r, nullptr, 0, r, part.data(), bytes));
      for (size_t i = 0; i < count; ++i) data[i] += part[i];
    }
    return absl::OkStatus();
  }
  absl::Status AllGather(const void* send, size_t bytes, void* recv) override {
    return AllGatherV(send, bytes, recv, std::vector<size_t>(size(), bytes));
  }
  absl::Status AllGatherV(const void* send, size_t bytes, void* recv,
                          const std::vector<size_t>& recv_bytes) override {
    const std::vector<size_t> off = PrefixOffsets(recv_bytes);
    std::memcpy(static_cast<char*>(recv) + off[rank_], send, bytes);
    for (int k = 1; k < size(); ++k) {
      const int to = (rank_ + k) % size(), from = (rank_ - k + size()) % size();
      MOE_RETURN_IF_ERROR(
          Exchange(to, send, bytes, from, static_cast<char*>(recv) + off[from], recv_bytes[from]));
    }
    return absl::OkStatus();
  }
  absl::Status AllToAll(const void* send, size_t bytes, void* recv) override {
    return AllToAllV(send, std::vector<size_t>(size(), bytes), recv,
                     std::vector<size_t>(size(), bytes));
  }
  absl::Status AllToAllV(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                         const std::vector<size_t>& recv_bytes) override {
    const std::vector<size_t> so = PrefixOffsets(send_bytes), ro = PrefixOffsets(recv_bytes);
    std::memcpy(static_cast<char*>(recv) + ro[rank_], static_cast<const char*>(send) + so[rank_],
                send_bytes[rank_]);
    for (int k = 1; k < size(); ++k) {
      const int to = (rank_ + k) % size(), from = (rank_ - k + size()) % size();
      MOE_RETURN_IF_ERROR(Exchange(to, static_cast<const char*>(send) + so[to], send_bytes[to],
                                   from, static_cast<char*>(recv) + ro[from], recv_bytes[from]));
    }
    return absl::OkStatus();
  }
  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    if (rank_ == root) {
      for (int r = 0; r < size(); ++r) {
        if (r != root) MOE_RETURN_IF_ERROR(Transfer(&Peer(r), data, bytes, nullptr, nullptr, 0));
      }
      return absl::OkStatus();
    }
    return Transfer(nullptr, nullptr, 0, &Peer(root), data, bytes);
  }
  absl::Status Barrier() override {
    std::vector<char> all(static_cast<size_t>(size()));
    const char one = 1;
    return AllGather(&one, 1, all.data());
  }
  bool on_one_host() const override { return false; }
  absl::StatusOr<std::unique_ptr<SharedWindow>> AllocateShared(size_t) override {
    return absl::UnimplementedError("the TCP backend has no shared windows");
  }
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    // Everyone learns everyone's (color, key); the members of my color, ordered by key, rank.
    const int64_t mine[2] = {color, key};
    std::vector<int64_t> all(static_cast<size_t>(2 * size()));
    MOE_RETURN_IF_ERROR(AllGather(mine, sizeof(mine), all.data()));
    std::vector<int> order;
    for (int r = 0; r < size(); ++r) {
      if (all[2 * r] == color) order.push_back(r);
    }
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return all[2 * a + 1] < all[2 * b + 1]; });
    std::vector<int> members;
    int new_rank = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      members.push_back(members_[order[i]]);
      if (order[i] == rank_) new_rank = static_cast<int>(i);
    }
    return std::unique_ptr<Communicator>(new TcpCommunicator(mesh_, members, new_rank));
  }

 private:
  const Link& Peer(int r) const { return mesh_->links[members_[r]]; }

  template <typename T>
  absl::Status Reduce(T* data, size_t count) {
    std::vector<T> all(count * size());
    MOE_RETURN_IF_ERROR(AllGather(data, count * sizeof(T), all.data()));
    for (size_t i = 0; i < count; ++i) {
      T sum = all[i];
      for (int r = 1; r < size(); ++r) sum += all[r * count + i];
      data[i] = sum;
    }
    return absl::OkStatus();
  }

  absl::Status Exchange(int to, const void* send, size_t sn, int from, void* recv, size_t rn) {
    return Transfer(&Peer(to), send, sn, &Peer(from), recv, rn);
  }

  std::shared_ptr<Mesh> mesh_;
  std::vector<int> members_;  // world ranks of this group
  int rank_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TcpListener>> TcpListener::Listen(const std::string& host_port) {
  MOE_ASSIGN_OR_RETURN(auto hp, SplitHostPort(host_port));
  MOE_ASSIGN_OR_RETURN(sockaddr_in addr, Resolve(hp.first, hp.second));
  std::unique_ptr<TcpListener> l(new TcpListener());
  l->fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l->fd_ < 0) return Errno("socket");
  int one = 1;
  setsockopt(l->fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(l->fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Errno(absl::StrCat("bind ", host_port));
  }
  if (::listen(l->fd_, 128) != 0) return Errno("listen");
  socklen_t len = sizeof(addr);
  getsockname(l->fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  l->address_ = absl::StrCat(hp.first, ":", ntohs(addr.sin_port));
  return l;
}

TcpListener::~TcpListener() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {

void SetNonBlocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

// The TLS handshake on a new connection, when the mesh has TLS; then the socket goes
// non-blocking for Transfer().
absl::StatusOr<Link> OpenLink(int fd, const MeshTls* tls, bool client, absl::Duration timeout) {
  Link link{fd, nullptr};
  if (tls != nullptr) {
    auto ssl = tls->Handshake(fd, client, std::max(timeout, absl::Seconds(1)));
    if (!ssl.ok()) {
      ::close(fd);
      return ssl.status();
    }
    link.ssl = *ssl;
  }
  SetNonBlocking(fd);
  return link;
}

std::string PeerAddress(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof(a);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return "?";
  char ip[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &a.sin_addr, ip, sizeof(ip));
  return absl::StrCat(ip, ":", ntohs(a.sin_port));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> ConnectTcpMesh(int rank,
                                                             const std::vector<std::string>& peers,
                                                             TcpListener& listener,
                                                             absl::Duration timeout,
                                                             const MeshTls* tls) {
  const int world = static_cast<int>(peers.size());
  auto mesh = std::make_shared<Mesh>();
  mesh->links.assign(static_cast<size_t>(world), Link{});
  const absl::Time deadline = absl::Now() + timeout;
  // Connect to the lower ranks (they may still be starting: retry until the deadline).
  for (int r = 0; r < rank; ++r) {
    MOE_ASSIGN_OR_RETURN(auto hp, SplitHostPort(peers[r]));
    MOE_ASSIGN_OR_RETURN(sockaddr_in addr, Resolve(hp.first, hp.second));
    while (true) {
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) return Errno("socket");
      if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
        Tune(fd);
        auto link = OpenLink(fd, tls, /*client=*/true, deadline - absl::Now());
        if (!link.ok()) {
          return absl::Status(link.status().code(),
                              absl::StrCat("rank ", rank, ": rank ", r, " at ", peers[r], ": ",
                                           link.status().message()));
        }
        mesh->links[r] = *link;
        const int32_t me = rank;
        MOE_RETURN_IF_ERROR(Transfer(&mesh->links[r], &me, sizeof(me), nullptr, nullptr, 0));
        break;
      }
      ::close(fd);
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("rank ", rank, ": cannot connect to rank ", r, " at ", peers[r]));
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
  // Accept the higher ranks; each announces its rank. With TLS, a connection that fails the
  // handshake is not one of them: it is closed and the wait goes on.
  for (int accepted = 0; accepted < world - rank - 1;) {
    pollfd p{listener.fd(), POLLIN, 0};
    const int wait_ms =
        static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
    if (::poll(&p, 1, wait_ms) <= 0) {
      return absl::DeadlineExceededError(absl::StrCat("rank ", rank, ": only ", accepted, " of ",
                                                      world - rank - 1, " higher ranks connected"));
    }
    const int fd = ::accept4(listener.fd(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return Errno("accept");
    Tune(fd);
    const std::string from = PeerAddress(fd);
    auto link = OpenLink(fd, tls, /*client=*/false, absl::Seconds(10));
    if (!link.ok()) {
      MOE_LOG(WARNING) << "rank " << rank << ": refused a mesh connection from " << from << ": "
                       << link.status().message();
      continue;
    }
    Mesh one;  // owns the link until it is known to be a peer
    one.links.push_back(*link);
    int32_t peer = -1;
    MOE_RETURN_IF_ERROR(Transfer(nullptr, nullptr, 0, &one.links[0], &peer, sizeof(peer)));
    if (peer <= rank || peer >= world || mesh->links[peer].fd >= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("rank ", rank, ": unexpected peer ", peer, " from ", from));
    }
    mesh->links[peer] = one.links[0];
    one.links.clear();
    ++accepted;
  }
  std::vector<int> members(static_cast<size_t>(world));
  std::iota(members.begin(), members.end(), 0);
  return std::unique_ptr<Communicator>(new TcpCommunicator(mesh, std::move(members), rank));
}

}  // namespace moe
