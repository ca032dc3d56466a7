// MoE dispatch/combine across real MPI ranks against a direct, non-distributed computation of
// the MoE output, with both transports — and the all-to-all-v transport on a memory the host
// cannot dereference (the shape of the GPU path: its RowMemory and its communicator are the only
// way to the rows, as device memory is reachable only through copies, kernels and NCCL). Experts
// are affine maps y = a_e x + b_e, so the expected output of token t is
// sum_j w_j (a_{e_j} x_t + b_{e_j}).
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>

#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "parallel/moe_dispatch.h"
#include "parallel/mpi_communicator.h"
#include "parallel/row_memory.h"

namespace moe {
namespace {

constexpr int64_t kHidden = 24;

float A(int64_t e) { return 1.0f + 0.01f * static_cast<float>(e); }
float B(int64_t e) { return 0.001f * static_cast<float>(e); }

struct Routing {
  int64_t tokens = 0;
  int64_t top_k = 0;
  std::vector<float> x;
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

using Transport = MoeDispatcher::Transport;

// Addresses with bit 62 flipped are not canonical on x86-64 (or valid user addresses on
// AArch64): a direct load or store through one faults. Only the two classes below undo it.
constexpr uintptr_t kTag = uintptr_t{1} << 62;
template <typename T>
T* Flip(T* p) {
  return reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(p) ^ kTag);
}

// Host memory behind flipped addresses, moved only by this RowMemory's operations.
class OpaqueRowMemory : public RowMemory {
 public:
  bool host() const override { return false; }
  absl::Status Reserve(Buffer* b, size_t bytes) override {
    if (bytes <= b->bytes) return absl::OkStatus();
    Buffer real{b->data == nullptr ? nullptr : Flip(b->data), b->bytes, b->owner};
    MOE_RETURN_IF_ERROR(host_.Reserve(&real, bytes));
    *b = Buffer{Flip(real.data), real.bytes, real.owner};
    return absl::OkStatus();
  }
  absl::Status CopyToHost(const void* src, size_t bytes, void* host) override {
    return host_.CopyToHost(Flip(src), bytes, host);
  }
  absl::Status CopyFromHost(const void* host, size_t bytes, void* dst) override {
    return host_.CopyFromHost(host, bytes, Flip(dst));
  }
  absl::Status GatherRows(const float* src, const int32_t* index, int64_t n, int64_t dim,
                          float* dst) override {
    return host_.GatherRows(Flip(src), index, n, dim, Flip(dst));
  }
  absl::Status SumRows(const float* src, const int64_t* rows, const int64_t* begin, int64_t n,
                       int64_t dim, float* out) override {
    return host_.SumRows(Flip(src), rows, begin, n, dim, Flip(out));
  }
  absl::Status SplitMeta(const int32_t* meta, int64_t n, int64_t k, int32_t* ids,
                         float* weights) override {
    return host_.SplitMeta(Flip(meta), n, k, Flip(ids), Flip(weights));
  }
  // The test's own way in and out.
  template <typename T>
  T* Put(const std::vector<T>& v, Buffer* b) {
    EXPECT_TRUE(Reserve(b, v.size() * sizeof(T) + 1).ok());
    EXPECT_TRUE(CopyFromHost(v.data(), v.size() * sizeof(T), b->data).ok());
    return static_cast<T*>(b->data);
  }
  template <typename T>
  std::vector<T> Get(const T* p, size_t n) {
    std::vector<T> v(n);
    EXPECT_TRUE(CopyToHost(p, n * sizeof(T), v.data()).ok());
    return v;
  }

 private:
  HostRowMemory host_;
};

// MPI's collectives on that memory (NCCL's part on a GPU). The rest is not used by the dispatcher.
class OpaqueCommunicator : public Communicator {
 public:
  explicit OpaqueCommunicator(Communicator* mpi) : mpi_(mpi) {}
  int rank() const override { return mpi_->rank(); }
  int size() const override { return mpi_->size(); }
  const char* backend() const override { return "opaque"; }
  absl::Status AllGather(const void* send, size_t bytes, void* recv) override {
    return mpi_->AllGather(Flip(send), bytes, Flip(recv));
  }
  absl::Status AllToAllV(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                         const std::vector<size_t>& recv_bytes) override {
    return mpi_->AllToAllV(Flip(send), send_bytes, Flip(recv), recv_bytes);
  }
  absl::Status AllReduceSum(float*, size_t) override { return Unused(); }
  absl::Status AllReduceSum(int64_t*, size_t) override { return Unused(); }
  absl::Status ReduceSum(int64_t*, size_t, int) override { return Unused(); }
  absl::Status AllGatherV(const void*, size_t, void*, const std::vector<size_t>&) override {
    return Unused();
  }
  absl::Status AllToAll(const void*, size_t, void*) override { return Unused(); }
  absl::Status Broadcast(void*, size_t, int) override { return Unused(); }
  absl::Status Barrier() override { return Unused(); }
  bool on_one_host() const override { return false; }
  absl::StatusOr<std::unique_ptr<SharedWindow>> AllocateShared(size_t) override { return Unused(); }
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int, int) override { return Unused(); }

 private:
  static absl::Status Unused() { return absl::UnimplementedError("not used by the dispatcher"); }
  Communicator* mpi_;
};

struct Case {
  Transport transport;
  bool opaque;  // the all-to-all-v transport on OpaqueRowMemory
};

class DispatchTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    auto w = MakeMpiWorldCommunicator();
    ASSERT_TRUE(w.ok());
    comm_ = std::move(*w);
    opaque_comm_ = std::make_unique<OpaqueCommunicator>(comm_.get());
  }

  MoeDispatcher Make(const ExpertPlacement& placement, int64_t top_k) {
    if (GetParam().opaque) {
      return MoeDispatcher(opaque_comm_.get(), &placement, kHidden, top_k, Transport::kAllToAllV,
                           &memory_);
    }
    return MoeDispatcher(comm_.get(), &placement, kHidden, top_k, GetParam().transport);
  }

  // Runs dispatch -> affine experts -> combine and checks every token of this rank.
  void Check(const Routing& r, int64_t num_experts) {
    const ExpertPlacement placement = ExpertPlacement::Contiguous(num_experts, comm_->size());
    MoeDispatcher dispatcher = Make(placement, r.top_k);
    CheckWith(dispatcher, placement, r);
  }

  void CheckWith(MoeDispatcher& dispatcher, const ExpertPlacement& placement, const Routing& r) {
    if (GetParam().opaque) return CheckOpaque(dispatcher, placement, r);
    auto d = dispatcher.Dispatch(r.x.data(), r.tokens, r.ids.data(), r.weights.data());
    ASSERT_TRUE(d.ok()) << d.status();
    ApplyExperts(placement, r.top_k, d->rows, d->x, d->local_expert, d->weight, d->y);
    std::vector<float> out(static_cast<size_t>(r.tokens * kHidden), -7.0f);
    ASSERT_TRUE(dispatcher.Combine(d->handle, out.data()).ok());
    ExpectMoeOutput(r, out);
  }

  // The same with every input and output in the opaque memory.
  void CheckOpaque(MoeDispatcher& dispatcher, const ExpertPlacement& placement, const Routing& r) {
    RowMemory::Buffer x, ids, weights, out;
    auto d = dispatcher.Dispatch(memory_.Put(r.x, &x), r.tokens, memory_.Put(r.ids, &ids),
                                 memory_.Put(r.weights, &weights));
    ASSERT_TRUE(d.ok()) << d.status();
    const size_t rows = static_cast<size_t>(d->rows), entries = rows * r.top_k;
    const auto dx = memory_.Get(d->x, rows * kHidden);
    const auto local = memory_.Get(d->local_expert, entries);
    const auto w = memory_.Get(d->weight, entries);
    std::vector<float> y(rows * kHidden);
    ApplyExperts(placement, r.top_k, d->rows, dx.data(), local.data(), w.data(), y.data());
    ASSERT_TRUE(memory_.CopyFromHost(y.data(), y.size() * sizeof(float), d->y).ok());
    float* dout = memory_.Put(std::vector<float>(r.tokens * kHidden, -7.0f), &out);
    ASSERT_TRUE(dispatcher.Combine(d->handle, dout).ok());
    ExpectMoeOutput(r, memory_.Get(dout, r.tokens * kHidden));
  }

  // y_row = sum over the row's entries of weight * expert(x_row).
  void ApplyExperts(const ExpertPlacement& placement, int64_t top_k, int64_t rows, const float* x,
                    const int32_t* local_expert, const float* weight, float* y_rows) {
    const auto& local = placement.LocalExperts(comm_->rank());
    for (int64_t i = 0; i < rows; ++i) {
      float* y = y_rows + i * kHidden;
      std::fill(y, y + kHidden, 0.0f);
      for (int64_t j = 0; j < top_k; ++j) {
        const int32_t le = local_expert[i * top_k + j];
        if (le < 0) continue;
        ASSERT_LT(le, static_cast<int32_t>(local.size()));
        const int64_t e = local[le];
        const float w = weight[i * top_k + j];
        for (int64_t c = 0; c < kHidden; ++c) y[c] += w * (A(e) * x[i * kHidden + c] + B(e));
      }
    }
  }

  void ExpectMoeOutput(const Routing& r, const std::vector<float>& out) {
    for (int64_t t = 0; t < r.tokens; ++t) {
      for (int64_t c = 0; c < kHidden; ++c) {
        double want = 0;
        for (int64_t j = 0; j < r.top_k; ++j) {
          const int32_t e = r.ids[t * r.top_k + j];
          want += r.weights[t * r.top_k + j] * (A(e) * r.x[t * kHidden + c] + B(e));
        }
        ASSERT_NEAR(out[t * kHidden + c], want, 1e-5) << "token " << t << " dim " << c;
      }
    }
  }

  Routing Random(int64_t tokens, int64_t top_k, int64_t experts, uint32_t seed) {
    Routing r;
    r.tokens = tokens;
    r.top_k = top_k;
    std::mt19937 rng(seed * 1000 + comm_->rank());
    std::normal_distribution<float> normal;
    std::uniform_real_distribution<float> uni(0.1f, 1.0f);
    for (int64_t i = 0; i < tokens * kHidden; ++i) r.x.push_back(normal(rng));
    std::vector<int32_t> all(static_cast<size_t>(experts));
    std::iota(all.begin(), all.end(), 0);
    for (int64_t t = 0; t < tokens; ++t) {
      std::shuffle(all.begin(), all.end(), rng);
      for (int64_t j = 0; j < top_k; ++j) {
        r.ids.push_back(all[j]);
        r.weights.push_back(uni(rng));
      }
    }
    return r;
  }

  std::unique_ptr<Communicator> comm_;
  std::unique_ptr<OpaqueCommunicator> opaque_comm_;
  OpaqueRowMemory memory_;
};

TEST_P(DispatchTest, RandomRoutingDifferentTokenCountsPerRank) {
  // Rank r has 3r + 1 tokens, except the last rank, which has none.
  const int me = comm_->rank(), w = comm_->size();
  Check(Random(me == w - 1 ? 0 : 3 * me + 1, 4, 16, 1), 16);
}

TEST_P(DispatchTest, EveryTokenToOneExpertOthersReceiveNothing) {
  Routing r = Random(9, 1, 16, 2);
  std::fill(r.ids.begin(), r.ids.end(), 3);  // expert 3 lives on rank 0 (or 1) only
  Check(r, 16);
}

TEST_P(DispatchTest, SingleTokenOnOneRank) {
  Check(Random(comm_->rank() == 0 ? 1 : 0, 8, 32, 3), 32);
}

TEST_P(DispatchTest, SeveralExpertsOfATokenOnTheSameRank) {
  // Experts 0..3 of 16: with contiguous blocks, pairs share a rank (all four on rank 0 at W=2).
  Routing r = Random(5, 4, 16, 4);
  for (int64_t t = 0; t < r.tokens; ++t) {
    for (int64_t j = 0; j < 4; ++j) r.ids[t * 4 + j] = static_cast<int32_t>(j);
  }
  Check(r, 16);
}

TEST_P(DispatchTest, ManyExpertsPerRankTopK8) { Check(Random(40, 8, 256, 5), 256); }

TEST_P(DispatchTest, BuffersGrowAndAreReused) {
  const ExpertPlacement placement = ExpertPlacement::Contiguous(16, comm_->size());
  MoeDispatcher dispatcher = Make(placement, 4);
  for (int64_t n : {1, 300, 5, 0, 700, 2})
    CheckWith(dispatcher, placement, Random(n, 4, 16, 6 + n));
}

TEST_P(DispatchTest, RejectsExpertOutOfRange) {
  Routing r = Random(2, 2, 16, 7);
  r.ids[1] = 16;
  const ExpertPlacement placement = ExpertPlacement::Contiguous(16, comm_->size());
  MoeDispatcher dispatcher = Make(placement, 2);
  // Every rank gets the same bad input, so every rank fails before any collective.
  RowMemory::Buffer x, ids, weights;
  const bool opaque = GetParam().opaque;
  EXPECT_EQ(dispatcher
                .Dispatch(opaque ? memory_.Put(r.x, &x) : r.x.data(), r.tokens,
                          opaque ? memory_.Put(r.ids, &ids) : r.ids.data(),
                          opaque ? memory_.Put(r.weights, &weights) : r.weights.data())
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Transports, DispatchTest,
                         ::testing::Values(Case{Transport::kSharedMemory, false},
                                           Case{Transport::kAllToAllV, false},
                                           Case{Transport::kAllToAllV, true}),
                         [](const auto& info) {
                           if (info.param.opaque) return "AllToAllVOnOpaqueMemory";
                           return info.param.transport == Transport::kSharedMemory ? "SharedMemory"
                                                                                   : "AllToAllV";
                         });

// The MPI communicator's reduce (the engine's sampled tokens go to the leader this way): the sum
// on the root only, each root in turn.
TEST(MpiCommunicatorTest, ReduceSumLandsOnTheRootOnly) {
  auto comm = MakeMpiWorldCommunicator();
  ASSERT_TRUE(comm.ok());
  const int w = (*comm)->size(), me = (*comm)->rank();
  for (int root = 0; root < w; ++root) {
    std::vector<int64_t> part = {me + 1, -3 * me};
    ASSERT_TRUE((*comm)->ReduceSum(part.data(), part.size(), root).ok());
    if (me == root) {
      EXPECT_EQ(part, (std::vector<int64_t>{w * (w + 1) / 2, -3 * (w * (w - 1) / 2)}));
    } else {
      EXPECT_EQ(part, (std::vector<int64_t>{me + 1, -3 * me}));
    }
  }
}

// The opaque memory really is out of the host's reach: the kernel refuses to read through one of
// its addresses (EFAULT, where a load in this process would fault), while the real address
// reads. So the dispatcher passing the tests above never read or wrote the rows itself.
TEST(OpaqueRowMemoryTest, ItsAddressesAreNotReadable) {
  OpaqueRowMemory memory;
  RowMemory::Buffer b;
  const float* p = memory.Put(std::vector<float>{1.0f, 2.0f}, &b);
  EXPECT_EQ(memory.Get(p, 2), (std::vector<float>{1.0f, 2.0f}));
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  errno = 0;
  EXPECT_EQ(write(fds[1], p, sizeof(float)), -1);
  EXPECT_EQ(errno, EFAULT);
  EXPECT_EQ(write(fds[1], Flip(p), sizeof(float)), static_cast<ssize_t>(sizeof(float)));
  close(fds[0]);
  close(fds[1]);
}

}  // namespace
}  // namespace moe
