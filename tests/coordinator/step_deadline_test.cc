#include "coordinator/step_deadline.h"

#include <gtest/gtest.h>

#include "common/presets.h"
#include "coordinator/cluster.h"

namespace moe {
namespace {

StepDeadlineOptions Options() {
  StepDeadlineOptions o;
  o.min = absl::Seconds(1);
  o.factor = 10;
  o.warmup = absl::Seconds(60);
  o.warmup_steps = 2;
  o.window = 4;
  return o;
}

TEST(StepDeadlineTest, FirstStepsGetTheWarmupDeadlineAndAreNotMeasured) {
  StepDeadline d(Options());
  EXPECT_EQ(d.For(1), absl::Seconds(60));
  d.Record(1, absl::Seconds(30));  // paging weights in
  d.Record(1, absl::Seconds(20));
  EXPECT_EQ(d.For(1), absl::Seconds(60));  // nothing measured yet
  d.Record(1, absl::Milliseconds(200));
  EXPECT_EQ(d.For(1), absl::Seconds(2));  // 10 x 200 ms, the warm-up steps forgotten
}

TEST(StepDeadlineTest, ScalesTheSlowestRecentStepUpToTheTokensNeverDown) {
  StepDeadline d(Options());
  d.Record(1, absl::Seconds(9));
  d.Record(1, absl::Seconds(9));
  d.Record(4, absl::Milliseconds(400));  // 100 ms a token
  d.Record(1, absl::Milliseconds(300));
  EXPECT_EQ(d.For(1), absl::Seconds(4));    // 10 x the slowest step, 400 ms
  EXPECT_EQ(d.For(40), absl::Seconds(120)); // 10 x 300 ms x 40 tokens (the 1-token step scaled)
  EXPECT_EQ(d.For(0), absl::Seconds(4));
}

TEST(StepDeadlineTest, NeverShorterThanTheMinimum) {
  StepDeadline d(Options());
  for (int i = 0; i < 5; ++i) d.Record(8, absl::Milliseconds(2));
  EXPECT_EQ(d.For(8), absl::Seconds(1));
}

TEST(StepDeadlineTest, ForgetsStepsOutsideTheWindow) {
  StepDeadline d(Options());
  d.Record(1, absl::Seconds(1));
  d.Record(1, absl::Seconds(1));
  d.Record(1, absl::Seconds(5));  // slow, then four fast ones push it out
  EXPECT_EQ(d.For(1), absl::Seconds(50));
  for (int i = 0; i < 4; ++i) d.Record(1, absl::Milliseconds(150));
  EXPECT_EQ(d.For(1), absl::Milliseconds(1500));
}

TEST(StepDeadlineTest, FactorZeroTurnsItOffAndResetStartsOver) {
  StepDeadlineOptions off = Options();
  off.factor = 0;
  EXPECT_EQ(StepDeadline(off).For(1), absl::InfiniteDuration());
  StepDeadline d(Options());
  for (int i = 0; i < 3; ++i) d.Record(1, absl::Milliseconds(200));
  d.Reset();
  EXPECT_EQ(d.For(1), absl::Seconds(60));
}

// A one-rank cluster whose step never comes back while the rank keeps sending heartbeats: the
// check fails the session past the step's deadline and says where the rank was.
TEST(ClusterStepDeadlineTest, AStepPastItsDeadlineFailsTheSessionNamingTheRanks) {
  auto plan = ShardPlan::Create(*PresetConfig("tiny-dsv3"), 1, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  Cluster::Options o;
  o.step_deadline.min = absl::Milliseconds(300);
  o.step_deadline.warmup = absl::Milliseconds(300);
  std::vector<std::string> phases;
  Cluster cluster(*plan, o, [&](Cluster::Phase p, const std::string& why) {
    phases.push_back(std::string(PhaseName(p)) + ": " + why);
  });
  moe::v1::RegisterRequest reg;
  reg.set_world_size(1);
  reg.set_host("host-a");
  auto r = cluster.Register(reg, absl::Seconds(5));
  ASSERT_TRUE(r.ok()) << r.status();
  moe::v1::ReadyRequest ready;
  ready.set_session(r->session());
  ASSERT_TRUE(cluster.Ready(ready).ok());
  ASSERT_EQ(cluster.phase(), Cluster::Phase::kServing);

  moe::v1::HeartbeatRequest hb;
  hb.set_session(r->session());
  // A step that comes back in time leaves the cluster serving.
  cluster.StepSent(1, 8);
  cluster.StepDone(1);
  cluster.Check();
  EXPECT_EQ(cluster.phase(), Cluster::Phase::kServing);

  cluster.StepSent(2, 1);
  hb.set_last_step(1);
  hb.set_current_step(2);
  hb.set_current_step_ms(250);
  const absl::Time wedged = absl::Now();
  while (cluster.phase() == Cluster::Phase::kServing && absl::Now() - wedged < absl::Seconds(5)) {
    ASSERT_TRUE(cluster.Heartbeat(hb).ok());  // alive all along
    cluster.Check();
    absl::SleepFor(absl::Milliseconds(20));
  }
  const absl::Duration took = absl::Now() - wedged;
  ASSERT_EQ(cluster.phase(), Cluster::Phase::kFailed);
  EXPECT_GE(took, absl::Milliseconds(300));
  EXPECT_LT(took, absl::Seconds(2));
  const std::string why = cluster.Describe();

  EXPECT_NE(why.find("step 2 (1 tokens) has run for"), std::string::npos) << why;
  EXPECT_NE(why.find("a rank is wedged"), std::string::npos) << why;
  EXPECT_NE(why.find("rank 0 (host-a): in step 2 for 250ms"), std::string::npos) << why;
  EXPECT_FALSE(cluster.Heartbeat(hb).ok());  // the rank is told its session ended
}

}  // namespace
}  // namespace moe
