// TwoBatchOverlap's contract: micro-batches take strict turns, so the communication thread
// receives the collectives in the order A0 B0 A1 B1 ...; a collective runs on that thread while
// the other micro-batch computes; errors come back to their micro-batch and out of Run.
#include "parallel/two_batch_overlap.h"

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

TEST(TwoBatchOverlapTest, CollectivesAlternateBetweenTheMicroBatches) {
  TwoBatchOverlap overlap;
  for (int round = 0; round < 3; ++round) {  // the object is reused step after step
    std::vector<std::string> order;          // written by the communication thread only
    const auto caller = std::this_thread::get_id();
    bool on_other_thread = true;
    // Micro-batch 1 has one collective fewer: after its last, 0 runs alone.
    ASSERT_TRUE(overlap
                    .Run([&](int mb) -> absl::Status {
                      const int n = mb == 0 ? 4 : 3;
                      for (int i = 0; i < n; ++i) {
                        absl::Status s = overlap.Communicate([&, i]() -> absl::Status {
                          on_other_thread &= std::this_thread::get_id() != caller;
                          order.push_back(absl::StrCat(mb == 0 ? "A" : "B", i));
                          return absl::OkStatus();
                        });
                        if (!s.ok()) return s;
                      }
                      return absl::OkStatus();
                    })
                    .ok());
    EXPECT_EQ(order, (std::vector<std::string>{"A0", "B0", "A1", "B1", "A2", "B2", "A3"}));
    EXPECT_TRUE(on_other_thread);
  }
  EXPECT_EQ(overlap.collectives(), 21);
}

// A's collective cannot finish until B has computed: without overlap it would wait forever (here:
// until a generous deadline, then fail).
TEST(TwoBatchOverlapTest, OneMicroBatchComputesWhileTheOthersCollectiveRuns) {
  TwoBatchOverlap overlap;
  std::atomic<bool> b_computed{false};
  absl::Status s = overlap.Run([&](int mb) -> absl::Status {
    if (mb == 0) {
      return overlap.Communicate([&]() -> absl::Status {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        while (!b_computed.load()) {
          if (std::chrono::steady_clock::now() > deadline) {
            return absl::DeadlineExceededError("micro-batch B never ran during A's collective");
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        return absl::OkStatus();
      });
    }
    b_computed = true;  // B's compute, before its own collective
    return overlap.Communicate([] { return absl::OkStatus(); });
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST(TwoBatchOverlapTest, ErrorsReachTheirMicroBatchAndRun) {
  TwoBatchOverlap overlap;
  std::vector<absl::StatusCode> seen(2);
  absl::Status s = overlap.Run([&](int mb) -> absl::Status {
    absl::Status c = overlap.Communicate(
        [mb] { return mb == 1 ? absl::UnavailableError("peer gone") : absl::OkStatus(); });
    seen[mb] = c.code();
    return c;
  });
  EXPECT_EQ(seen[0], absl::StatusCode::kOk);
  EXPECT_EQ(seen[1], absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "peer gone");
  // A micro-batch's own error (no collective at all) comes out too, micro-batch 0's first.
  s = overlap.Run([](int mb) { return absl::InvalidArgumentError(mb == 0 ? "first" : "second"); });
  EXPECT_EQ(s.message(), "first");
}

}  // namespace
}  // namespace moe
