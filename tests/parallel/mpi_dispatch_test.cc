// MoE dispatch/combine across real MPI ranks against a direct, non-distributed computation of
// the MoE output, with both transports. Experts are affine maps y = a_e x + b_e, so the expected
// output of token t is sum_j w_j (a_{e_j} x_t + b_{e_j}).
#include <cmath>
#include <numeric>
#include <random>

#include "gtest/gtest.h"
#include "parallel/moe_dispatch.h"
#include "parallel/mpi_communicator.h"

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

class DispatchTest : public ::testing::TestWithParam<Transport> {
 protected:
  void SetUp() override {
    auto w = MakeMpiWorldCommunicator();
    ASSERT_TRUE(w.ok());
    comm_ = std::move(*w);
  }

  // Runs dispatch -> affine experts -> combine and checks every token of this rank.
  void Check(const Routing& r, int64_t num_experts) {
    const ExpertPlacement placement = ExpertPlacement::Contiguous(num_experts, comm_->size());
    MoeDispatcher dispatcher(comm_.get(), &placement, kHidden, r.top_k, GetParam());
    CheckWith(dispatcher, placement, r);
  }

  void CheckWith(MoeDispatcher& dispatcher, const ExpertPlacement& placement, const Routing& r) {
    auto d = dispatcher.Dispatch(r.x.data(), r.tokens, r.ids.data(), r.weights.data());
    ASSERT_TRUE(d.ok()) << d.status();
    const auto& local = placement.LocalExperts(comm_->rank());
    for (int64_t i = 0; i < d->rows; ++i) {
      float* y = d->y + i * kHidden;
      std::fill(y, y + kHidden, 0.0f);
      for (int64_t j = 0; j < r.top_k; ++j) {
        const int32_t le = d->local_expert[i * r.top_k + j];
        if (le < 0) continue;
        ASSERT_LT(le, static_cast<int32_t>(local.size()));
        const int64_t e = local[le];
        const float w = d->weight[i * r.top_k + j];
        for (int64_t c = 0; c < kHidden; ++c) y[c] += w * (A(e) * d->x[i * kHidden + c] + B(e));
      }
    }
    std::vector<float> out(static_cast<size_t>(r.tokens * kHidden), -7.0f);
    ASSERT_TRUE(dispatcher.Combine(d->handle, out.data()).ok());
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
  MoeDispatcher dispatcher(comm_.get(), &placement, kHidden, 4, GetParam());
  for (int64_t n : {1, 300, 5, 0, 700, 2})
    CheckWith(dispatcher, placement, Random(n, 4, 16, 6 + n));
}

TEST_P(DispatchTest, RejectsExpertOutOfRange) {
  Routing r = Random(2, 2, 16, 7);
  r.ids[1] = 16;
  const ExpertPlacement placement = ExpertPlacement::Contiguous(16, comm_->size());
  MoeDispatcher dispatcher(comm_.get(), &placement, kHidden, 2, GetParam());
  // Every rank gets the same bad input, so every rank fails before any collective.
  EXPECT_EQ(
      dispatcher.Dispatch(r.x.data(), r.tokens, r.ids.data(), r.weights.data()).status().code(),
      absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Transports, DispatchTest,
                         ::testing::Values(Transport::kSharedMemory, Transport::kAllToAllV),
                         [](const auto& info) {
                           return info.param == Transport::kSharedMemory ? "SharedMemory"
                                                                         : "AllToAllV";
                         });

}  // namespace
}  // namespace moe
