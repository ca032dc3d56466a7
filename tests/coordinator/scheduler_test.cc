// The scheduler driven by a fake engine that checks every plan it receives: each chunk continues
// exactly where its sequence's cached positions end, block tables hold enough blocks and no block
// belongs to two live sequences of a group. The fake's next token is a pure function of the
// sequence so far, so preemption + recompute must reproduce the same outputs.
#include "coordinator/scheduler.h"

#include <map>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

constexpr int64_t kVocab = 97;

int32_t NextToken(const std::vector<int32_t>& seq) {
  uint64_t h = 1469598103934665603ull;
  for (int32_t t : seq) h = (h ^ static_cast<uint64_t>(t)) * 1099511628211ull;
  return static_cast<int32_t>(h % kVocab);
}

class FakeEngine {
 public:
  explicit FakeEngine(const SchedulerOptions& o) : o_(o) {}

  // Runs one plan; records failures with gtest. `all` maps request id -> prompt + generated.
  moe::v1::StepResult Run(const moe::v1::StepPlan& plan) {
    moe::v1::StepResult r;
    r.set_step(plan.step());
    std::map<int, std::set<int32_t>> used;  // group -> blocks of sequences in this step
    for (const auto& s : plan.sequences()) {
      const int64_t id = s.seq_id();
      auto& known = cached_[id];
      // A chunk starts where the cache ends, unless the sequence restarts (recompute).
      if (s.start_pos() == 0) known.clear();
      EXPECT_EQ(s.start_pos(), static_cast<int64_t>(known.size())) << "seq " << id;
      for (int32_t t : s.tokens()) known.push_back(t);
      EXPECT_GE(s.block_table_size() * o_.block_size, static_cast<int64_t>(known.size()));
      for (int32_t b : s.block_table()) {
        EXPECT_TRUE(used[s.dp_group()].insert(b).second) << "block " << b << " shared";
        EXPECT_LT(b, o_.blocks_per_group);
      }
      EXPECT_LT(s.dp_group(), o_.dp_groups);
      if (s.sample()) {
        r.add_seq_ids(id);
        r.add_tokens(NextToken(known));
      }
    }
    return r;
  }

 private:
  SchedulerOptions o_;
  std::map<int64_t, std::vector<int32_t>> cached_;
};

RequestParams Params(std::vector<int32_t> prompt, int64_t max_tokens) {
  RequestParams p;
  p.prompt = std::move(prompt);
  p.max_tokens = max_tokens;
  return p;
}

std::vector<int32_t> Expected(std::vector<int32_t> prompt, int64_t n) {
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t t = NextToken(prompt);
    out.push_back(t);
    prompt.push_back(t);
  }
  return out;
}

// Drives the scheduler until idle; returns each request's tokens.
std::vector<std::vector<int32_t>> Drive(Scheduler& s, FakeEngine& engine,
                                        const std::vector<std::shared_ptr<Request>>& reqs,
                                        int max_steps = 10000) {
  for (int i = 0; i < max_steps && !s.idle(); ++i) {
    auto plan = s.NextStep(absl::ZeroDuration());
    if (!plan) continue;
    s.Complete(engine.Run(*plan));
  }
  EXPECT_TRUE(s.idle());
  std::vector<std::vector<int32_t>> out;
  for (const auto& r : reqs) {
    std::vector<int32_t> t;
    EXPECT_TRUE(r->Wait(absl::ZeroDuration(), &t));
    out.push_back(t);
  }
  return out;
}

SchedulerOptions Options(int groups, int64_t blocks, int64_t block_size, int64_t step_tokens) {
  SchedulerOptions o;
  o.dp_groups = groups;
  o.blocks_per_group = blocks;
  o.block_size = block_size;
  o.max_step_tokens = step_tokens;
  return o;
}

TEST(SchedulerTest, ChunkedPrefillThenDecode) {
  const SchedulerOptions o = Options(1, 16, 4, 4);
  Scheduler s(o);
  FakeEngine engine(o);
  std::vector<int32_t> prompt = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
  auto r = *s.Submit(Params(prompt, 6));
  // The first steps are 4-token chunks of the prompt, with no sampling until the last one.
  auto p1 = s.NextStep(absl::ZeroDuration());
  ASSERT_TRUE(p1);
  ASSERT_EQ(p1->sequences_size(), 1);
  EXPECT_EQ(p1->sequences(0).tokens_size(), 4);
  EXPECT_FALSE(p1->sequences(0).sample());
  s.Complete(engine.Run(*p1));
  auto out = Drive(s, engine, {r});
  EXPECT_EQ(out[0], Expected(prompt, 6));
  EXPECT_EQ(r->finish_reason(), moe::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(s.Stats().blocks_free, 16);
}

TEST(SchedulerTest, NewRequestsJoinTheRunningBatch) {
  const SchedulerOptions o = Options(1, 64, 4, 64);
  Scheduler s(o);
  FakeEngine engine(o);
  auto a = *s.Submit(Params({1, 2, 3}, 8));
  auto p = s.NextStep(absl::ZeroDuration());
  s.Complete(engine.Run(*p));
  auto b = *s.Submit(Params({4, 5}, 3));  // arrives while a decodes
  p = s.NextStep(absl::ZeroDuration());
  ASSERT_EQ(p->sequences_size(), 2);  // a's decode token and b's prefill in one step
  EXPECT_EQ(p->sequences(0).tokens_size(), 1);
  EXPECT_EQ(p->sequences(1).tokens_size(), 2);
  s.Complete(engine.Run(*p));
  auto out = Drive(s, engine, {a, b});
  EXPECT_EQ(out[0], Expected({1, 2, 3}, 8));
  EXPECT_EQ(out[1], Expected({4, 5}, 3));
}

TEST(SchedulerTest, PreemptsTheNewestAndRecomputesUnderASmallCache) {
  // 12 blocks of 4 tokens = 48 positions; 10 requests of up to 20 positions each cannot all fit.
  const SchedulerOptions o = Options(1, 12, 4, 32);
  Scheduler s(o);
  FakeEngine engine(o);
  std::vector<std::shared_ptr<Request>> reqs;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 10; ++i) {
    std::vector<int32_t> prompt;
    for (int j = 0; j <= i % 5 + 3; ++j) prompt.push_back(i * 10 + j);
    prompts.push_back(prompt);
    reqs.push_back(*s.Submit(Params(prompt, 12)));
  }
  auto out = Drive(s, engine, reqs);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(out[i], Expected(prompts[i], 12)) << "request " << i;
  EXPECT_GT(s.Stats().preemptions, 0);
  EXPECT_EQ(s.Stats().blocks_free, 12);
}

TEST(SchedulerTest, FirstComeFirstServed) {
  // Room for one sequence at a time: requests finish in arrival order.
  const SchedulerOptions o = Options(1, 4, 4, 64);
  Scheduler s(o);
  FakeEngine engine(o);
  std::vector<std::shared_ptr<Request>> reqs;
  for (int i = 0; i < 4; ++i) reqs.push_back(*s.Submit(Params({i, i + 1, i + 2, i + 3, i + 4}, 9)));
  std::vector<int64_t> order;
  while (!s.idle()) {
    auto p = s.NextStep(absl::ZeroDuration());
    if (!p) continue;
    s.Complete(engine.Run(*p));
    for (const auto& r : reqs) {
      std::vector<int32_t> t;
      if (r->Wait(absl::ZeroDuration(), &t) &&
          std::find(order.begin(), order.end(), r->id()) == order.end()) {
        order.push_back(r->id());
      }
    }
  }
  EXPECT_EQ(order, (std::vector<int64_t>{0, 1, 2, 3}));
}

TEST(SchedulerTest, CancelledRequestLeavesWithinOneStepAndFreesBlocks) {
  const SchedulerOptions o = Options(1, 32, 4, 64);
  Scheduler s(o);
  FakeEngine engine(o);
  auto a = *s.Submit(Params({1, 2, 3, 4, 5, 6, 7, 8, 9}, 100));
  auto b = *s.Submit(Params({3, 4}, 100));
  for (int i = 0; i < 3; ++i) s.Complete(engine.Run(*s.NextStep(absl::ZeroDuration())));
  EXPECT_GT(s.Stats().blocks_used, 0);
  a->Cancel();
  auto p = s.NextStep(absl::ZeroDuration());
  ASSERT_TRUE(p);
  ASSERT_EQ(p->sequences_size(), 1);
  EXPECT_EQ(p->sequences(0).seq_id(), b->id());
  EXPECT_EQ(a->status().code(), absl::StatusCode::kCancelled);
  s.Complete(engine.Run(*p));
  // Only b's blocks remain: its 2-token prompt plus 3 decoded tokens = 5 positions, 2 blocks.
  EXPECT_EQ(s.Stats().blocks_used, 2);
  b->Cancel();
  EXPECT_FALSE(s.NextStep(absl::ZeroDuration()));
  EXPECT_EQ(s.Stats().blocks_used, 0);
}

TEST(SchedulerTest, StopTokensAndEos) {
  SchedulerOptions o = Options(1, 32, 4, 64);
  const std::vector<int32_t> prompt = {1, 2, 3};
  const std::vector<int32_t> want = Expected(prompt, 10);
  o.eos_token_ids = {want[4]};
  Scheduler s(o);
  FakeEngine engine(o);
  RequestParams stop = Params(prompt, 10);
  stop.stop_token_ids = {want[2]};
  auto a = *s.Submit(stop);                // ends at its stop token (the 3rd)
  auto b = *s.Submit(Params(prompt, 10));  // ends at EOS (the 5th)
  RequestParams ignore = Params(prompt, 10);
  ignore.ignore_eos = true;
  auto c = *s.Submit(ignore);  // runs to max_tokens
  auto out = Drive(s, engine, {a, b, c});
  EXPECT_EQ(out[0], std::vector<int32_t>(want.begin(), want.begin() + 3));
  EXPECT_EQ(a->finish_reason(), moe::v1::FINISH_REASON_STOP);
  EXPECT_EQ(out[1], std::vector<int32_t>(want.begin(), want.begin() + 5));
  EXPECT_EQ(b->finish_reason(), moe::v1::FINISH_REASON_STOP);
  EXPECT_EQ(out[2], want);
  EXPECT_EQ(c->finish_reason(), moe::v1::FINISH_REASON_LENGTH);
}

TEST(SchedulerTest, QueueBound) {
  SchedulerOptions o = Options(1, 32, 4, 64);
  o.max_waiting = 2;
  Scheduler s(o);
  EXPECT_TRUE(s.Submit(Params({1}, 2)).ok());
  EXPECT_TRUE(s.Submit(Params({1}, 2)).ok());
  const absl::Status full = s.Submit(Params({1}, 2)).status();
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(full.message()), ::testing::HasSubstr("--max-queue"));
}

TEST(SchedulerTest, SpreadsOverDpGroups) {
  const SchedulerOptions o = Options(3, 8, 4, 256);
  Scheduler s(o);
  FakeEngine engine(o);
  std::vector<std::shared_ptr<Request>> reqs;
  for (int i = 0; i < 6; ++i) reqs.push_back(*s.Submit(Params({i, 7, 8, 9, 10}, 4)));
  auto p = s.NextStep(absl::ZeroDuration());
  std::map<int, int> per_group;
  for (const auto& seq : p->sequences()) ++per_group[seq.dp_group()];
  EXPECT_EQ(per_group.size(), 3u);
  s.Complete(engine.Run(*p));
  auto out = Drive(s, engine, reqs);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(out[i], Expected({i, 7, 8, 9, 10}, 4));
}

TEST(SchedulerTest, FailAllEndsEverythingAndFreesBlocks) {
  const SchedulerOptions o = Options(1, 32, 4, 64);
  Scheduler s(o);
  FakeEngine engine(o);
  auto a = *s.Submit(Params({1, 2, 3}, 50));
  s.Complete(engine.Run(*s.NextStep(absl::ZeroDuration())));
  auto b = *s.Submit(Params({1, 2, 3}, 50));
  s.FailAll(absl::UnavailableError("a worker failed"));
  EXPECT_EQ(a->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(b->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(s.idle());
  EXPECT_EQ(s.Stats().blocks_free, 32);
}

TEST(SchedulerTest, SamplingSpecAndIndexTravelWithThePlan) {
  const SchedulerOptions o = Options(1, 32, 4, 64);
  Scheduler s(o);
  RequestParams p = Params({1, 2}, 3);
  p.sampling.set_temperature(0.5f);
  p.sampling.set_seed(99);
  auto r = *s.Submit(p);
  FakeEngine engine(o);
  for (int64_t index = 0; index < 3; ++index) {
    auto plan = s.NextStep(absl::ZeroDuration());
    ASSERT_TRUE(plan);
    EXPECT_EQ(plan->sequences(0).sample_index(), index);
    EXPECT_EQ(plan->sequences(0).sampling().seed(), 99u);
    EXPECT_FLOAT_EQ(plan->sequences(0).sampling().temperature(), 0.5f);
    s.Complete(engine.Run(*plan));
  }
}

}  // namespace
}  // namespace moe
