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

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
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

absl::Status WriteAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return Errno("send to peer");
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

absl::Status ReadAll(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) return absl::UnavailableError("peer closed the connection");
    if (r < 0) return Errno("receive from peer");
    p += r;
    n -= static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

// The sockets of a mesh, shared by a communicator and the sub-groups split from it: operations
// are issued in the same program order on every rank, so sharing a socket cannot mix messages up.
struct Mesh {
  std::vector<int> fds;  // by world rank; -1 for self
  ~Mesh() {
    for (int fd : fds) {
      if (fd >= 0) ::close(fd);
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
        if (r != root) MOE_RETURN_IF_ERROR(WriteAll(Fd(r), data, bytes));
      }
      return absl::OkStatus();
    }
    return ReadAll(Fd(root), data, bytes);
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
  int Fd(int r) const { return mesh_->fds[members_[r]]; }

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

  // Sends `sn` bytes to `to` while receiving `rn` bytes from `from`, progressing both.
  absl::Status Exchange(int to, const void* send, size_t sn, int from, void* recv, size_t rn) {
    const int out = Fd(to), in = Fd(from);
    const char* sp = static_cast<const char*>(send);
    char* rp = static_cast<char*>(recv);
    while (sn > 0 || rn > 0) {
      pollfd fds[2];
      int n = 0, si = -1, ri = -1;
      if (sn > 0) {
        si = n;
        fds[n++] = {out, POLLOUT, 0};
      }
      if (rn > 0) {
        ri = n;
        fds[n++] = {in, POLLIN, 0};
      }
      if (::poll(fds, static_cast<nfds_t>(n), -1) < 0) {
        if (errno == EINTR) continue;
        return Errno("poll");
      }
      if (si >= 0 && (fds[si].revents & (POLLOUT | POLLERR | POLLHUP))) {
        const ssize_t w = ::send(out, sp, sn, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno != EAGAIN && errno != EINTR) return Errno("send to peer");
        if (w > 0) {
          sp += w;
          sn -= static_cast<size_t>(w);
        }
      }
      if (ri >= 0 && (fds[ri].revents & (POLLIN | POLLERR | POLLHUP))) {
        const ssize_t r = ::recv(in, rp, rn, MSG_DONTWAIT);
        if (r == 0) return absl::UnavailableError("peer closed the connection");
        if (r < 0 && errno != EAGAIN && errno != EINTR) return Errno("receive from peer");
        if (r > 0) {
          rp += r;
          rn -= static_cast<size_t>(r);
        }
      }
    }
    return absl::OkStatus();
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

absl::StatusOr<std::unique_ptr<Communicator>> ConnectTcpMesh(int rank,
                                                             const std::vector<std::string>& peers,
                                                             TcpListener& listener,
                                                             absl::Duration timeout) {
  const int world = static_cast<int>(peers.size());
  auto mesh = std::make_shared<Mesh>();
  mesh->fds.assign(static_cast<size_t>(world), -1);
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
        const int32_t me = rank;
        MOE_RETURN_IF_ERROR(WriteAll(fd, &me, sizeof(me)));
        mesh->fds[r] = fd;
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
  // Accept the higher ranks; each announces its rank.
  for (int accepted = 0; accepted < world - rank - 1; ++accepted) {
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
    int32_t peer = -1;
    MOE_RETURN_IF_ERROR(ReadAll(fd, &peer, sizeof(peer)));
    if (peer <= rank || peer >= world || mesh->fds[peer] >= 0) {
      ::close(fd);
      return absl::InvalidArgumentError(absl::StrCat("rank ", rank, ": unexpected peer ", peer));
    }
    mesh->fds[peer] = fd;
  }
  std::vector<int> members(static_cast<size_t>(world));
  std::iota(members.begin(), members.end(), 0);
  return std::unique_ptr<Communicator>(new TcpCommunicator(mesh, std::move(members), rank));
}

}  // namespace moe
