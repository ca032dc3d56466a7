#include "coordinator/metrics.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, RendersPrometheusText) {
  Metrics m;
  m.RequestEnded("finished");
  m.RequestEnded("finished");
  m.RequestEnded("cancelled");
  m.AddGenerationTokens(7);
  m.ObserveTimeToFirstToken(0.02);
  m.ObserveTimeToFirstToken(3.0);
  m.AddExpertTokens({4, 0, 9});
  m.AddExpertTokens({1, 1, 1});
  Metrics::Gauges g;
  g.waiting = 3;
  g.blocks_used = 5;
  g.blocks_free = 11;
  const std::string text = m.Render(g);
  EXPECT_THAT(text, HasSubstr("moe_requests_total{outcome=\"finished\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("moe_requests_total{outcome=\"cancelled\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("moe_generation_tokens_total 7\n"));
  // Cumulative buckets: 0.02 falls in le=0.025, 3.0 in le=5.
  EXPECT_THAT(text, HasSubstr("moe_time_to_first_token_seconds_bucket{le=\"0.01\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("moe_time_to_first_token_seconds_bucket{le=\"0.025\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("moe_time_to_first_token_seconds_bucket{le=\"5\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("moe_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("moe_time_to_first_token_seconds_count 2\n"));
  EXPECT_THAT(text, HasSubstr("moe_queue_depth 3\n"));
  EXPECT_THAT(text, HasSubstr("moe_kv_blocks_used 5\n"));
  EXPECT_THAT(text, HasSubstr("moe_expert_tokens_total{expert=\"2\"} 10\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE moe_inter_token_latency_seconds histogram\n"));
}

}  // namespace
}  // namespace moe
