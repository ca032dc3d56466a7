// The TCP mesh backend with W ranks as threads of this process, over loopback sockets, in
// plaintext and with mutual TLS.
#include "parallel/tcp_communicator.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <numeric>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "parallel/moe_dispatch.h"
#include "tests/test_util.h"

namespace moe {
namespace {

// Test certificates (deploy/tls/make-test-certs.sh), made once: `which` 0 and 1 are two clusters
// with different CAs.
TlsFiles ClusterFiles(int which) {
  static const auto* dirs = [] {
    auto* d = new std::vector<std::string>;
    for (int i = 0; i < 2; ++i) {
      d->push_back(absl::StrCat(::testing::TempDir(), "/moe_mesh_certs_", getpid(), "_", i));
      const auto r = testing::RunCommand(
          absl::StrCat(MOE_SOURCE_DIR, "/deploy/tls/make-test-certs.sh ", d->back()));
      EXPECT_EQ(r.exit_code, 0) << r.err;
    }
    return d;
  }();
  const std::string& dir = (*dirs)[which];
  return TlsFiles{dir + "/cluster.pem", dir + "/cluster.key", dir + "/cluster-ca.pem"};
}

std::unique_ptr<MeshTls> ClusterTls(int which) {
  auto tls = MeshTls::Create(ClusterFiles(which));
  EXPECT_TRUE(tls.ok()) << tls.status();
  return tls.ok() ? std::move(*tls) : nullptr;
}

// Runs body(rank, comm) on `world` threads joined in one mesh (mutual TLS with `tls`).
void RunMesh(int world, const std::function<void(int, Communicator&)>& body,
             const MeshTls* tls = nullptr) {
  std::vector<std::unique_ptr<TcpListener>> listeners;
  std::vector<std::string> peers;
  for (int r = 0; r < world; ++r) {
    auto l = TcpListener::Listen("127.0.0.1:0");
    ASSERT_TRUE(l.ok()) << l.status();
    peers.push_back((*l)->address());
    listeners.push_back(std::move(*l));
  }
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      auto comm = ConnectTcpMesh(r, peers, *listeners[r], absl::Seconds(20), tls);
      ASSERT_TRUE(comm.ok()) << comm.status();
      body(r, **comm);
    });
  }
  for (auto& t : threads) t.join();
}

// (world size, mutual TLS)
class TcpTest : public ::testing::TestWithParam<std::tuple<int, bool>> {
 protected:
  void SetUp() override {
    if (std::get<1>(GetParam())) tls_ = ClusterTls(0);
  }
  void RunMesh(int world, const std::function<void(int, Communicator&)>& body) {
    ::moe::RunMesh(world, body, tls_.get());
  }
  std::unique_ptr<MeshTls> tls_;
};

TEST_P(TcpTest, Collectives) {
  const int W = std::get<0>(GetParam());
  RunMesh(W, [W](int rank, Communicator& c) {
    EXPECT_EQ(c.rank(), rank);
    EXPECT_EQ(c.size(), W);
    std::vector<float> v = {1.0f * rank, 2.0f, -1.0f * rank};
    ASSERT_TRUE(c.AllReduceSum(v.data(), v.size()).ok());
    const float ranks = static_cast<float>(W * (W - 1) / 2);
    EXPECT_EQ(v, (std::vector<float>{ranks, 2.0f * W, -ranks}));
    int64_t n = rank + 1;
    ASSERT_TRUE(c.AllReduceSum(&n, 1).ok());
    EXPECT_EQ(n, W * (W + 1) / 2);
    // Reduce to each root in turn: the sum there, the others' data untouched.
    for (int root = 0; root < W; ++root) {
      std::vector<int64_t> part = {rank + 1, 10 * rank};
      ASSERT_TRUE(c.ReduceSum(part.data(), part.size(), root).ok());
      if (rank == root) {
        EXPECT_EQ(part, (std::vector<int64_t>{W * (W + 1) / 2, 10 * (W * (W - 1) / 2)}));
      } else {
        EXPECT_EQ(part, (std::vector<int64_t>{rank + 1, 10 * rank}));
      }
    }
    // All-gather-v: rank r contributes r + 1 bytes of value r.
    std::vector<size_t> sizes(W);
    for (int r = 0; r < W; ++r) sizes[r] = r + 1;
    std::vector<char> mine(rank + 1, static_cast<char>(rank)), all(W * (W + 1) / 2);
    ASSERT_TRUE(c.AllGatherV(mine.data(), mine.size(), all.data(), sizes).ok());
    size_t off = 0;
    for (int r = 0; r < W; ++r) {
      for (int i = 0; i <= r; ++i) EXPECT_EQ(all[off++], r);
    }
    // Broadcast from the last rank.
    int64_t b = rank == W - 1 ? 1234 : 0;
    ASSERT_TRUE(c.WaitBroadcast(&b, sizeof(b), W - 1).ok());
    EXPECT_EQ(b, 1234);
    ASSERT_TRUE(c.Barrier().ok());
  });
}

TEST_P(TcpTest, LargeAllToAllVDoesNotDeadlock) {
  // 8 MiB to every peer at once: far beyond socket buffers.
  const int W = std::get<0>(GetParam());
  const size_t n = 8u << 20;
  RunMesh(W, [&](int rank, Communicator& c) {
    std::vector<size_t> bytes(W, n);
    std::vector<uint8_t> send(n * W), recv(n * W);
    for (int r = 0; r < W; ++r)
      std::fill(send.begin() + r * n, send.begin() + (r + 1) * n, rank * 16 + r);
    ASSERT_TRUE(c.AllToAllV(send.data(), bytes, recv.data(), bytes).ok());
    for (int s = 0; s < W; ++s) {
      EXPECT_EQ(recv[s * n], s * 16 + rank);
      EXPECT_EQ(recv[(s + 1) * n - 1], s * 16 + rank);
    }
  });
}

TEST_P(TcpTest, SplitIntoGroups) {
  const int W = std::get<0>(GetParam());
  RunMesh(W, [&](int rank, Communicator& c) {
    auto sub = c.Split(rank % 2, -rank);  // two groups, ranks reversed by key
    ASSERT_TRUE(sub.ok());
    int64_t v = rank;
    ASSERT_TRUE((*sub)->AllReduceSum(&v, 1).ok());
    int64_t want = 0, members = 0;
    for (int r = rank % 2; r < W; r += 2) {
      want += r;
      ++members;
    }
    EXPECT_EQ(v, want);
    EXPECT_EQ((*sub)->size(), members);
    // The world still works after (and interleaved with) the sub-group.
    int64_t w = 1;
    ASSERT_TRUE(c.AllReduceSum(&w, 1).ok());
    EXPECT_EQ(w, W);
  });
}

TEST_P(TcpTest, MoeDispatchCombineMatchesDirectComputation) {
  const int W = std::get<0>(GetParam());
  const int64_t hidden = 16, top_k = 3, experts = 12, tokens = 7;
  RunMesh(W, [&](int rank, Communicator& c) {
    const ExpertPlacement placement = ExpertPlacement::Contiguous(experts, W);
    MoeDispatcher d(&c, &placement, hidden, top_k);
    EXPECT_EQ(d.transport(), MoeDispatcher::Transport::kAllToAllV);
    std::mt19937 rng(rank);
    std::vector<float> x(tokens * hidden), w(tokens * top_k, 0.5f);
    for (float& v : x) v = std::uniform_real_distribution<float>(-1, 1)(rng);
    std::vector<int32_t> ids(tokens * top_k);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t j = 0; j < top_k; ++j)
        ids[t * top_k + j] = static_cast<int32_t>((t + 4 * j + rank) % experts);
    }
    auto out = d.Dispatch(x.data(), tokens, ids.data(), w.data());
    ASSERT_TRUE(out.ok());
    const auto& local = placement.LocalExperts(rank);
    for (int64_t i = 0; i < out->rows; ++i) {  // expert e scales by (e + 1)
      for (int64_t c2 = 0; c2 < hidden; ++c2) {
        float y = 0;
        for (int64_t j = 0; j < top_k; ++j) {
          const int32_t le = out->local_expert[i * top_k + j];
          if (le >= 0) y += out->weight[i * top_k + j] * (local[le] + 1) * out->x[i * hidden + c2];
        }
        out->y[i * hidden + c2] = y;
      }
    }
    std::vector<float> combined(tokens * hidden);
    ASSERT_TRUE(d.Combine(out->handle, combined.data()).ok());
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t c2 = 0; c2 < hidden; ++c2) {
        float want = 0;
        for (int64_t j = 0; j < top_k; ++j)
          want += 0.5f * (ids[t * top_k + j] + 1) * x[t * hidden + c2];
        EXPECT_NEAR(combined[t * hidden + c2], want, 1e-5);
      }
    }
  });
}

TEST(TcpMeshTest, UnreachablePeerTimesOut) {
  auto l = TcpListener::Listen("127.0.0.1:0");
  ASSERT_TRUE(l.ok());
  // Rank 1 of 2 whose rank 0 never listens at the given address.
  auto c = ConnectTcpMesh(1, {"127.0.0.1:1", (*l)->address()}, **l, absl::Milliseconds(300));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kDeadlineExceeded);
}

// A mutual-TLS mesh refuses what the cluster CA did not sign and still forms with its ranks:
// rank 0 sees a plaintext client, then a rank with another cluster's certificate, then its real
// rank 1.
TEST(TcpMeshTest, MutualTlsRefusesStrangersAndStillForms) {
  const auto tls = ClusterTls(0), foreign = ClusterTls(1);
  ASSERT_TRUE(tls && foreign);
  auto l0 = TcpListener::Listen("127.0.0.1:0");
  auto l1 = TcpListener::Listen("127.0.0.1:0");
  auto lx = TcpListener::Listen("127.0.0.1:0");
  ASSERT_TRUE(l0.ok() && l1.ok() && lx.ok());
  const std::vector<std::string> peers = {(*l0)->address(), (*l1)->address()};
  absl::StatusOr<std::unique_ptr<Communicator>> rank0;
  std::thread t0([&] { rank0 = ConnectTcpMesh(0, peers, **l0, absl::Seconds(30), tls.get()); });

  // A plaintext client announcing itself as rank 1: the handshake fails, the link is closed.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(peers[0].substr(peers[0].rfind(':') + 1))));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const int32_t fake[4] = {1, 0, 0, 0};
  ASSERT_EQ(::send(fd, fake, sizeof(fake), MSG_NOSIGNAL), static_cast<ssize_t>(sizeof(fake)));
  char byte;
  EXPECT_LE(::recv(fd, &byte, 1, 0), 0);  // closed on it (or an alert, then closed)
  while (::recv(fd, &byte, 1, 0) > 0) {
  }
  ::close(fd);

  // A rank of another cluster: its certificate is refused, so nothing it sends arrives; it
  // refuses rank 0's certificate too.
  auto stranger = ConnectTcpMesh(1, peers, **lx, absl::Seconds(30), foreign.get());
  EXPECT_FALSE(stranger.ok());
  EXPECT_EQ(stranger.status().code(), absl::StatusCode::kUnauthenticated) << stranger.status();

  // The real rank 1.
  auto rank1 = ConnectTcpMesh(1, peers, **l1, absl::Seconds(30), tls.get());
  t0.join();
  ASSERT_TRUE(rank0.ok()) << rank0.status();
  ASSERT_TRUE(rank1.ok()) << rank1.status();
  int64_t a = 5, b = 7;
  std::thread r0([&] { ASSERT_TRUE((*rank0)->AllReduceSum(&a, 1).ok()); });
  ASSERT_TRUE((*rank1)->AllReduceSum(&b, 1).ok());
  r0.join();
  EXPECT_EQ(a, 12);
  EXPECT_EQ(b, 12);
}

TEST(TcpMeshTest, MutualTlsNeedsAllThreeFilesAndNamesABadOne) {
  TlsFiles f = ClusterFiles(0);
  f.ca.clear();
  EXPECT_EQ(MeshTls::Create(f).status().code(), absl::StatusCode::kInvalidArgument);
  f = ClusterFiles(0);
  f.key = f.cert;  // a certificate where the key should be
  const auto bad = MeshTls::Create(f);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("--cluster-key"), std::string::npos) << bad.status();
}

INSTANTIATE_TEST_SUITE_P(Worlds, TcpTest,
                         ::testing::Combine(::testing::Values(2, 3, 4), ::testing::Bool()),
                         [](const auto& info) {
                           return absl::StrCat("W", std::get<0>(info.param),
                                               std::get<1>(info.param) ? "_Tls" : "_Plain");
                         });

}  // namespace
}  // namespace moe
