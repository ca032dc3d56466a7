// The scheduler driven by a fake engine with a paged KV cache of its own: each chunk's context is
// read from the blocks its table names (every position must have been written, by this
// sequence or by one whose prefix it shares), its tokens are written to them (no block written
// in a step may be in another sequence's table in that step), and the next token is a pure
// function of the context read — so a block shared, evicted or reused wrongly changes the
// outputs, which must equal those of the whole sequence computed directly.
#include "coordinator/scheduler.h"

#include <map>
#include <numeric>
#include <set>

#include "absl/strings/str_cat.h"
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

  moe::v1::StepResult Run(const moe::v1::StepPlan& plan) {
    moe::v1::StepResult r;
    r.set_step(plan.step());
    std::map<int, std::map<int32_t, int>> holders;  // group -> block -> sequences naming it
    std::map<int, std::set<int32_t>> written;       // group -> blocks written in this step
    for (const auto& s : plan.sequences()) {
      EXPECT_LT(s.dp_group(), o_.dp_groups);
      const int64_t end = s.start_pos() + s.tokens_size();
      EXPECT_EQ(s.window_block_tables_size(), o_.kv_layout.window_groups());
      for (int g = 0; g <= s.window_block_tables_size(); ++g) {
        const auto& table = g == 0 ? s.block_table() : s.window_block_tables(g - 1).blocks();
        const int64_t live = o_.kv_layout.groups.empty()
                                 ? 0
                                 : o_.kv_layout.FirstLiveBlock(g, s.start_pos(), o_.block_size);
        for (int i = 0; i < table.size(); ++i) {
          // A window group's blocks before the live ones have gone back to the pool.
          if (g > 0 && i < live) {
            EXPECT_EQ(table[i], -1) << "seq " << s.seq_id() << " group " << g << " entry " << i;
            continue;
          }
          EXPECT_LT(table[i], o_.blocks_per_group);
          EXPECT_GE(table[i], 0) << "seq " << s.seq_id() << " group " << g << " entry " << i;
          ++holders[s.dp_group()][table[i]];
        }
        EXPECT_GE(table.size() * o_.block_size, end) << "seq " << s.seq_id();
        for (int64_t pos = s.start_pos(); pos < end; ++pos) {
          written[s.dp_group()].insert(table[static_cast<int>(pos / o_.block_size)]);
        }
      }
    }
    for (const auto& [group, blocks] : written) {
      for (int32_t b : blocks) EXPECT_EQ(holders[group][b], 1) << "block " << b << " written while shared";
    }
    for (const auto& s : plan.sequences()) {
      const int g = s.dp_group();
      std::vector<int32_t> context;
      for (int64_t pos = 0; pos < s.start_pos(); ++pos) {
        const int32_t t = Slot(g, s.block_table(static_cast<int>(pos / o_.block_size)), pos);
        EXPECT_GE(t, 0) << "seq " << s.seq_id() << " reads position " << pos << " nobody wrote";
        context.push_back(t);
      }
      // Each window group reads the positions its window (or chunk) sees from its own blocks.
      for (int w = 0; w < s.window_block_tables_size(); ++w) {
        const KvLayout::Group& group = o_.kv_layout.groups[static_cast<size_t>(w + 1)];
        const auto& table = s.window_block_tables(w).blocks();
        for (int64_t pos = FirstVisibleKey(s.start_pos(), group.window, group.chunk);
             pos < s.start_pos(); ++pos) {
          EXPECT_EQ(Slot(g, table[static_cast<int>(pos / o_.block_size)], pos), context[pos])
              << "seq " << s.seq_id() << " window group " << w + 1 << " position " << pos;
        }
      }
      for (int i = 0; i < s.tokens_size(); ++i) {
        const int64_t pos = s.start_pos() + i;
        Slot(g, s.block_table(static_cast<int>(pos / o_.block_size)), pos) = s.tokens(i);
        for (const auto& table : s.window_block_tables()) {
          Slot(g, table.blocks(static_cast<int>(pos / o_.block_size)), pos) = s.tokens(i);
        }
        context.push_back(s.tokens(i));
      }
      if (!s.sample()) continue;
      // Speculation: the drafts (the last num_draft tokens) are checked as the model would, up
      // to the first that is not the next token; then a new draft, right every other time.
      std::vector<int32_t> known(context.begin(), context.end() - s.num_draft());
      std::vector<int32_t> made;
      for (int j = 0; j <= s.num_draft(); ++j) {
        made.push_back(NextToken(known));
        known.push_back(made.back());
        if (j < s.num_draft() && made.back() != s.tokens(s.tokens_size() - s.num_draft() + j)) {
          break;
        }
      }
      r.add_seq_ids(s.seq_id());
      r.add_tokens(made[0]);
      r.add_next_tokens()->mutable_ids()->Add(made.begin() + 1, made.end());
      const int32_t right = NextToken(known);
      moe::v1::TokenIds* drafts = r.add_drafts();
      if (s.mtp()) drafts->add_ids(drafts_++ % 2 == 0 ? right : (right + 1) % kVocab);
    }
    return r;
  }

  // Disaggregation: copies the positions a transfer covers into `to`'s blocks, as the workers'
  // push does; false when one of them was never written here.
  bool Transfer(const moe::v1::KvTransferPlan& t, FakeEngine& to) {
    for (int64_t pos = 0; pos < t.tokens(); ++pos) {
      const int i = static_cast<int>(pos / o_.block_size);
      const int32_t token = Slot(t.dp_group(), t.blocks(i), pos);
      if (token < 0) return false;
      to.Slot(t.decode_dp_group(), t.decode_blocks(i), pos) = token;
    }
    return true;
  }

 private:
  int32_t& Slot(int group, int32_t block, int64_t pos) {
    auto& slots = blocks_[{group, block}];
    if (slots.empty()) slots.assign(static_cast<size_t>(o_.block_size), -1);
    return slots[static_cast<size_t>(pos % o_.block_size)];
  }

  SchedulerOptions o_;
  std::map<std::pair<int, int32_t>, std::vector<int32_t>> blocks_;
  int64_t drafts_ = 0;
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

// Speculative decoding: a decoding sequence's step carries its draft (a token of the budget and a
// KV slot); an accepted draft brings two tokens at once, a rejected one's slot is written again
// — the outputs equal the direct computation, with and without chunked prefill and preemption.
TEST(SchedulerTest, SpeculativeDraftsKeepTheOutputs) {
  for (const int64_t blocks : {64, 10}) {  // 10: preemptions
    SCOPED_TRACE(absl::StrCat(blocks, " blocks"));
    SchedulerOptions o = Options(2, blocks, 4, 8);
    o.speculative = true;
    Scheduler s(o);
    FakeEngine engine(o);
    std::vector<std::shared_ptr<Request>> reqs;
    std::vector<std::vector<int32_t>> prompts;
    for (int i = 0; i < 8; ++i) {
      prompts.push_back({});
      for (int j = 0; j < 3 + 2 * i; ++j) prompts.back().push_back((i * 7 + j * 3) % kVocab);
      reqs.push_back(*s.Submit(Params(prompts.back(), 5 + i)));
    }
    auto first = s.NextStep(absl::ZeroDuration());
    ASSERT_TRUE(first);
    for (const auto& p : first->sequences()) {
      EXPECT_TRUE(p.mtp());
      EXPECT_EQ(p.num_draft(), 0);  // nothing drafted before a prefill
      if (!p.sample()) {
        EXPECT_GE(p.lookahead(), 0);  // a chunk short of the prompt's end
      }
    }
    s.Complete(engine.Run(*first));
    const auto out = Drive(s, engine, reqs);
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ(out[i], Expected(prompts[i], 5 + static_cast<int64_t>(i))) << i;
    }
    const SchedulerStats st = s.Stats();
    EXPECT_GT(st.drafts, 10);
    EXPECT_GT(st.drafts_accepted, 0);
    EXPECT_LT(st.drafts_accepted, st.drafts);
    EXPECT_EQ(st.blocks_used, 0);  // nothing held at the end
  }
}

TEST(SchedulerTest, NoDraftForTheLastTokenOrWithLogprobs) {
  SchedulerOptions o = Options(1, 64, 4, 64);
  o.speculative = true;
  Scheduler s(o);
  FakeEngine engine(o);
  auto one = *s.Submit(Params({1, 2, 3}, 2));
  RequestParams lp = Params({4, 5}, 6);
  lp.sampling.set_logprobs(true);
  auto with_logprobs = *s.Submit(lp);
  int drafts_seen = 0;
  while (!s.idle()) {
    auto p = s.NextStep(absl::ZeroDuration());
    if (!p) continue;
    for (const auto& q : p->sequences()) {
      if (q.seq_id() == with_logprobs->id()) {
        EXPECT_EQ(q.num_draft(), 0);
      }
      drafts_seen += q.num_draft();
    }
    s.Complete(engine.Run(*p));
  }
  // `one`: its prefill gives token 1 and a draft; the step for token 2 is its last: no draft.
  EXPECT_EQ(drafts_seen, 0);
  std::vector<int32_t> t;
  ASSERT_TRUE(one->Wait(absl::ZeroDuration(), &t));
  EXPECT_EQ(t, Expected({1, 2, 3}, 2));
}

// Window layer groups (Gemma 3's sliding layers): besides the full-attention table each sequence
// holds one per group, giving back the blocks its window has passed. Eight requests of 64
// positions in blocks of 4 would need 8 × 16 × 3 = 384 blocks with every table whole; here they
// run in 8 × MostBlocks = 200 without a preemption, and their outputs equal the direct ones.
TEST(SchedulerTest, WindowGroupsGiveBackTheBlocksTheirWindowPassed) {
  SchedulerOptions o = Options(1, 200, 4, 8);
  o.kv_layout.slots = 1;
  o.kv_layout.groups = {{{0}, 0, 0}, {{1}, 6, 0}, {{2}, 0, 4}};  // a window of 6, chunks of 4
  o.kv_layout.group_of = {0, 1, 2};
  o.kv_layout.slot_of = {0, 0, 0};
  o.prefix_cache = true;  // turned off: a cached prefix would need the window groups' blocks
  // Steps of up to 8 tokens: the window's 5 earlier positions and 8 more over at most 5 blocks,
  // a chunk's 3 and 8 more over at most 4.
  EXPECT_EQ(o.kv_layout.MostBlocks(64, 8, 4), 16 + 5 + 4);
  Scheduler s(o);
  FakeEngine engine(o);
  std::vector<std::shared_ptr<Request>> reqs;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 8; ++i) {
    std::vector<int32_t> prompt(8, 3);  // the same prompt: nothing is shared
    prompt.push_back(i);
    prompts.push_back(prompt);
    reqs.push_back(*s.Submit(Params(prompt, 64 - 9)));
  }
  auto out = Drive(s, engine, reqs);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(out[i], Expected(prompts[i], 64 - 9)) << "request " << i;
  EXPECT_EQ(s.Stats().preemptions, 0);
  EXPECT_EQ(s.Stats().prefix_cache.hit_tokens, 0);
  EXPECT_EQ(s.Stats().blocks_free, 200);
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

namespace moe {
namespace {

std::vector<int32_t> Range(int32_t from, int32_t n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), from);
  return v;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The first plan entry of request `id` in the next step.
const moe::v1::SequencePlan* EntryOf(const moe::v1::StepPlan& p, int64_t id) {
  for (const auto& s : p.sequences()) {
    if (s.seq_id() == id) return &s;
  }
  return nullptr;
}

TEST(PrefixCacheSchedulerTest, ALaterRequestStartsAfterTheCachedPrefix) {
  const SchedulerOptions o = Options(1, 32, 4, 64);
  Scheduler s(o);
  FakeEngine engine(o);
  const std::vector<int32_t> system = Range(10, 12);  // three full blocks
  const std::vector<int32_t> a_prompt = Concat(system, {1, 2}), b_prompt = Concat(system, {3, 4, 5});
  auto a = *s.Submit(Params(a_prompt, 5));
  EXPECT_EQ(Drive(s, engine, {a})[0], Expected(a_prompt, 5));
  // An unrelated request in between takes free blocks, not the cached ones.
  const std::vector<int32_t> other = Range(60, 17);
  auto x = *s.Submit(Params(other, 5));
  EXPECT_EQ(Drive(s, engine, {x})[0], Expected(other, 5));
  auto b = *s.Submit(Params(b_prompt, 5));
  auto p = s.NextStep(absl::ZeroDuration());
  ASSERT_TRUE(p);
  const auto* entry = EntryOf(*p, b->id());
  ASSERT_NE(entry, nullptr);
  EXPECT_EQ(entry->start_pos(), 12);  // the system prompt's blocks are reused
  EXPECT_EQ(entry->tokens_size(), 3);
  s.Complete(engine.Run(*p));
  EXPECT_EQ(Drive(s, engine, {b})[0], Expected(b_prompt, 5));
  const SchedulerStats st = s.Stats();
  EXPECT_EQ(st.prefix_cache.hit_tokens, 12);
  EXPECT_EQ(st.prefix_cache.query_tokens,
            static_cast<int64_t>(a_prompt.size() + other.size() + b_prompt.size()));
  EXPECT_GE(st.prefix_cache.cached_blocks, 3);
  EXPECT_EQ(st.blocks_used, 0);  // cached blocks no sequence holds are not "used"
  EXPECT_EQ(st.blocks_free, 32);
}

TEST(PrefixCacheSchedulerTest, AFullyCachedPromptStillComputesItsLastToken) {
  const SchedulerOptions o = Options(1, 32, 4, 64);
  Scheduler s(o);
  FakeEngine engine(o);
  const std::vector<int32_t> prompt = Range(40, 8);  // exactly two blocks
  for (int round = 0; round < 3; ++round) {
    auto r = *s.Submit(Params(prompt, 4));
    auto p = s.NextStep(absl::ZeroDuration());
    ASSERT_TRUE(p);
    EXPECT_EQ(p->sequences(0).start_pos(), round == 0 ? 0 : 4) << "round " << round;
    s.Complete(engine.Run(*p));
    EXPECT_EQ(Drive(s, engine, {r})[0], Expected(prompt, 4)) << "round " << round;
  }
  // Multi-turn: the next turn's prompt holds the previous prompt and answer.
  const std::vector<int32_t> turn2 = Concat(Concat(prompt, Expected(prompt, 4)), {7, 7, 7});
  auto r = *s.Submit(Params(turn2, 3));
  auto p = s.NextStep(absl::ZeroDuration());
  EXPECT_EQ(p->sequences(0).start_pos(), 8);  // the answer's first 3 tokens ended in no full block
  s.Complete(engine.Run(*p));
  EXPECT_EQ(Drive(s, engine, {r})[0], Expected(turn2, 3));
}

TEST(PrefixCacheSchedulerTest, LiveSequencesShareBlocksAndOneCancelledLeavesTheOtherRight) {
  const SchedulerOptions o = Options(1, 32, 4, 64);
  Scheduler s(o);
  FakeEngine engine(o);
  const std::vector<int32_t> shared = Range(100, 8);
  auto first = *s.Submit(Params(Concat(shared, {1}), 40));
  s.Complete(engine.Run(*s.NextStep(absl::ZeroDuration())));  // first's prefill: blocks cached
  auto a = *s.Submit(Params(Concat(shared, {2}), 40));
  auto b = *s.Submit(Params(Concat(shared, {3}), 40));
  auto p = s.NextStep(absl::ZeroDuration());
  ASSERT_TRUE(p);
  const auto* ea = EntryOf(*p, a->id());
  const auto* eb = EntryOf(*p, b->id());
  ASSERT_TRUE(ea && eb);
  EXPECT_EQ(ea->start_pos(), 8);
  EXPECT_EQ(eb->start_pos(), 8);
  EXPECT_EQ(ea->block_table(0), eb->block_table(0));  // one copy of the shared prefix
  s.Complete(engine.Run(*p));
  for (int i = 0; i < 5; ++i) s.Complete(engine.Run(*s.NextStep(absl::ZeroDuration())));
  first->Cancel();
  a->Cancel();  // one of the sharers goes; the other's prefix must stay intact
  const auto out = Drive(s, engine, {b});
  EXPECT_EQ(out[0], Expected(Concat(shared, {3}), 40));
  EXPECT_EQ(s.Stats().blocks_used, 0);
}

TEST(PrefixCacheSchedulerTest, EvictsLeastRecentlyUsedUnderPressureAndStaysRight) {
  // 10 blocks of 4: far fewer than the prompts' prefixes need.
  const SchedulerOptions o = Options(1, 10, 4, 32);
  Scheduler s(o);
  FakeEngine engine(o);
  // Four 3-block prefixes, each asked for twice in a row (the second time a hit), cycling so that
  // older prefixes must make room; then all at once, with preemption.
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 10; ++i) prompts.push_back(Concat(Range(200 + 16 * ((i / 2) % 4), 12), {i}));
  for (const auto& prompt : prompts) {
    auto r = *s.Submit(Params(prompt, 6));
    EXPECT_EQ(Drive(s, engine, {r})[0], Expected(prompt, 6));
  }
  std::vector<std::shared_ptr<Request>> reqs;
  for (const auto& prompt : prompts) reqs.push_back(*s.Submit(Params(prompt, 6)));
  const auto out = Drive(s, engine, reqs);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(out[i], Expected(prompts[i], 6)) << i;
  const SchedulerStats st = s.Stats();
  EXPECT_GT(st.prefix_cache.evictions, 0);
  EXPECT_GT(st.prefix_cache.hit_tokens, 0);
  EXPECT_EQ(st.blocks_used, 0);
  EXPECT_EQ(st.blocks_free, 10);
}

TEST(PrefixCacheSchedulerTest, RoutesToTheGroupHoldingThePrefix) {
  const SchedulerOptions o = Options(2, 16, 4, 64);
  Scheduler s(o);
  FakeEngine engine(o);
  const std::vector<int32_t> prefix = Range(300, 8);
  auto a = *s.Submit(Params(Concat(prefix, {1}), 2));
  auto p = s.NextStep(absl::ZeroDuration());
  const int group = p->sequences(0).dp_group();
  s.Complete(engine.Run(*p));
  Drive(s, engine, {a});
  // Another request first fills the other group's free-block lead... then the sharer arrives.
  for (int i = 0; i < 3; ++i) {
    auto r = *s.Submit(Params(Concat(prefix, {10 + i}), 2));
    auto q = s.NextStep(absl::ZeroDuration());
    EXPECT_EQ(EntryOf(*q, r->id())->dp_group(), group);
    EXPECT_EQ(EntryOf(*q, r->id())->start_pos(), 8);
    s.Complete(engine.Run(*q));
    EXPECT_EQ(Drive(s, engine, {r})[0], Expected(Concat(prefix, {10 + i}), 2));
  }
}

TEST(PrefixCacheSchedulerTest, OffComputesEveryPrompt) {
  SchedulerOptions o = Options(1, 32, 4, 64);
  o.prefix_cache = false;
  Scheduler s(o);
  FakeEngine engine(o);
  const std::vector<int32_t> prompt = Range(50, 12);
  for (int round = 0; round < 2; ++round) {
    auto r = *s.Submit(Params(prompt, 3));
    auto p = s.NextStep(absl::ZeroDuration());
    EXPECT_EQ(p->sequences(0).start_pos(), 0);
    s.Complete(engine.Run(*p));
    EXPECT_EQ(Drive(s, engine, {r})[0], Expected(prompt, 3));
  }
  EXPECT_EQ(s.Stats().prefix_cache.hit_tokens, 0);
  EXPECT_EQ(s.Stats().prefix_cache.cached_blocks, 0);
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

TEST(PrefixCacheSchedulerTest, FailAllForgetsTheCachedPrefixes) {
  const SchedulerOptions o = Options(1, 32, 4, 64);
  Scheduler s(o);
  FakeEngine engine(o);
  const std::vector<int32_t> prompt = Range(70, 12);
  auto a = *s.Submit(Params(prompt, 3));
  Drive(s, engine, {a});
  EXPECT_GE(s.Stats().prefix_cache.cached_blocks, 2);
  s.FailAll(absl::UnavailableError("a worker failed"));  // relaunched workers hold no KV
  EXPECT_EQ(s.Stats().prefix_cache.cached_blocks, 0);
  FakeEngine fresh(o);
  auto b = *s.Submit(Params(prompt, 3));
  auto p = s.NextStep(absl::ZeroDuration());
  EXPECT_EQ(p->sequences(0).start_pos(), 0);
  s.Complete(fresh.Run(*p));
  EXPECT_EQ(Drive(s, fresh, {b})[0], Expected(prompt, 3));
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

// Prefill/decode disaggregation: the main group's fake engine prefills, its transfers copy the
// positions' slots into the decode group's fake engine, which decodes. The decode engine starts
// empty, so a sequence decoding from blocks that no transfer (or an incomplete one) filled reads
// unwritten positions, and outputs are the whole sequence's direct computation.
class Disaggregated {
 public:
  explicit Disaggregated(SchedulerOptions o, int64_t step_tokens = 16)
      : main_opts_(Main(o, step_tokens)),
        decode_opts_(Decode(main_opts_)),
        s_(main_opts_),
        main_(main_opts_),
        decode_(decode_opts_) {}

  static SchedulerOptions Main(SchedulerOptions o, int64_t step_tokens) {
    o.max_step_tokens = step_tokens;
    return o;
  }
  static SchedulerOptions Decode(const SchedulerOptions& o) {
    SchedulerOptions d = o;
    d.dp_groups = o.decode_dp_groups;
    d.blocks_per_group = o.decode_blocks_per_group;
    return d;
  }

  Scheduler& scheduler() { return s_; }
  std::shared_ptr<Request> Submit(std::vector<int32_t> prompt, int64_t max_tokens) {
    return *s_.Submit(Params(std::move(prompt), max_tokens));
  }
  // The main group's step and its transfers (those of `fail_seq` fail).
  std::optional<moe::v1::StepPlan> PlanMain() { return s_.NextStep(absl::ZeroDuration()); }
  moe::v1::StepResult RunMain(const moe::v1::StepPlan& plan) {
    moe::v1::StepResult r = main_.Run(plan);
    main_sampled += r.tokens_size();
    for (const auto& t : plan.kv_transfers()) {
      moe::v1::KvTransferDone* d = r.add_kv_transfers();
      d->set_seq_id(t.seq_id());
      const bool ok = t.seq_id() != fail_seq && main_.Transfer(t, decode_);
      d->set_ok(ok);
      d->set_bytes(ok ? t.tokens() : 0);
      ++transfers;
    }
    return r;
  }
  std::optional<moe::v1::StepPlan> PlanDecode() {
    return s_.NextStep(absl::ZeroDuration(), WorkerGroup::kDecode);
  }
  moe::v1::StepResult RunDecode(const moe::v1::StepPlan& plan) {
    EXPECT_EQ(plan.kv_transfers_size(), 0);
    for (const auto& e : plan.sequences()) EXPECT_LT(e.dp_group(), decode_opts_.dp_groups);
    decoded_tokens += plan.sequences_size();
    return decode_.Run(plan);
  }
  // Both groups' steps in flight at once, then completed (decode first), until idle.
  void Drive(int max_steps = 10000) {
    for (int i = 0; i < max_steps && !s_.idle(); ++i) {
      auto pm = PlanMain();
      auto pd = PlanDecode();
      const moe::v1::StepResult rm = pm ? RunMain(*pm) : moe::v1::StepResult();
      const moe::v1::StepResult rd = pd ? RunDecode(*pd) : moe::v1::StepResult();
      if (pd) s_.Complete(rd, WorkerGroup::kDecode);
      if (pm) s_.Complete(rm);
    }
    EXPECT_TRUE(s_.idle());
  }

  int64_t fail_seq = -1;
  // Tokens the main group sampled (one per prefill: the main group never decodes), transfers it
  // ran, sequence entries of the decode group's steps.
  int64_t main_sampled = 0, transfers = 0, decoded_tokens = 0;

 private:
  SchedulerOptions main_opts_, decode_opts_;
  Scheduler s_;
  FakeEngine main_, decode_;
};

SchedulerOptions DisaggregatedOptions(int64_t main_blocks, int decode_groups,
                                      int64_t decode_blocks) {
  SchedulerOptions o = Options(2, main_blocks, 4, 16);
  o.decode_dp_groups = decode_groups;
  o.decode_blocks_per_group = decode_blocks;
  return o;
}

std::vector<int32_t> Tokens(const std::shared_ptr<Request>& r) {
  std::vector<int32_t> t;
  r->Wait(absl::ZeroDuration(), &t);
  return t;
}

TEST(DisaggregatedSchedulerTest, PrefillsInTheMainGroupAndDecodesInTheDecodeGroup) {
  Disaggregated d(DisaggregatedOptions(64, 2, 64));
  std::vector<std::shared_ptr<Request>> reqs;
  std::vector<std::vector<int32_t>> prompts;
  int64_t transferred_tokens = 0, decoding = 0;
  for (int i = 0; i < 12; ++i) {
    prompts.push_back(Range(100 + 7 * i, 1 + (i * 11) % 37));  // 1..37 tokens: chunked at 16
    const int64_t max_tokens = 1 + (i * 5) % 9;
    reqs.push_back(d.Submit(prompts.back(), max_tokens));
    if (max_tokens > 1) {
      transferred_tokens += static_cast<int64_t>(prompts.back().size());
      ++decoding;
    }
  }
  d.Drive();
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(Tokens(reqs[i]), Expected(prompts[i], 1 + (static_cast<int64_t>(i) * 5) % 9))
        << "request " << i;
    EXPECT_TRUE(reqs[i]->status().ok());
  }
  const SchedulerStats st = d.scheduler().Stats();
  EXPECT_EQ(st.kv_transfers, decoding);  // one transfer each; none for a one-token request
  EXPECT_EQ(d.transfers, decoding);
  EXPECT_EQ(st.kv_transfer_bytes, transferred_tokens);  // the fake counts positions
  EXPECT_EQ(st.kv_transfer_failures, 0);
  EXPECT_EQ(st.blocks_used, 0);
  EXPECT_EQ(d.main_sampled, 12);  // each request's first token; the rest came from decode
  EXPECT_GT(d.decoded_tokens, 0);
}

// A decode group too small for everyone: transfers wait for blocks (the prefilled sequences keep
// theirs), and decoding sequences are preempted and prefilled again by the main group.
TEST(DisaggregatedSchedulerTest, TransfersWaitForDecodeBlocksAndPreemptedSequencesComeBack) {
  Disaggregated d(DisaggregatedOptions(64, 1, 12));  // 48 decode positions
  std::vector<std::shared_ptr<Request>> reqs;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 6; ++i) {
    prompts.push_back(Range(10 * i, 9 + i));
    reqs.push_back(d.Submit(prompts.back(), 14));
  }
  d.Drive();
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(Tokens(reqs[i]), Expected(prompts[i], 14)) << "request " << i;
  }
  const SchedulerStats st = d.scheduler().Stats();
  EXPECT_GT(st.preemptions, 0);
  EXPECT_GT(st.kv_transfers, 6);  // preempted ones were transferred again
  EXPECT_EQ(d.main_sampled, 6 + st.preemptions);
  EXPECT_EQ(st.blocks_used, 0);
}

TEST(DisaggregatedSchedulerTest, CancellationDuringTransferFreesBlocksInBothGroups) {
  Disaggregated d(DisaggregatedOptions(16, 1, 16));
  auto r = d.Submit(Range(3, 10), 8);
  auto other = d.Submit(Range(40, 6), 8);
  auto plan = d.PlanMain();
  ASSERT_TRUE(plan);
  ASSERT_EQ(plan->kv_transfers_size(), 2);          // both prompts end in this step: sent with it
  EXPECT_GT(d.scheduler().Stats().blocks_used, 6);  // 3 + 2 main, 3 + 2 decode
  r->Cancel();  // while the step (and its transfer) is in flight
  d.scheduler().Complete(d.RunMain(*plan));
  d.Drive();
  EXPECT_EQ(r->status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(Tokens(other), Expected(Range(40, 6), 8));
  EXPECT_EQ(d.scheduler().Stats().blocks_used, 0);
  EXPECT_EQ(d.scheduler().Stats().decode_running, 0);
}

TEST(DisaggregatedSchedulerTest, CancellationWhileWaitingForDecodeBlocksFreesThem) {
  Disaggregated d(DisaggregatedOptions(16, 1, 3));  // room for one 8-token prompt's transfer
  auto a = d.Submit(Range(3, 8), 3);
  auto b = d.Submit(Range(50, 8), 3);
  auto plan = d.PlanMain();
  ASSERT_EQ(plan->kv_transfers_size(), 1);
  d.scheduler().Complete(d.RunMain(*plan));
  EXPECT_EQ(d.scheduler().Stats().decode_running, 1);
  // b is prefilled and holds its main blocks, waiting for decode ones.
  EXPECT_FALSE(d.PlanMain().has_value());
  EXPECT_GT(d.scheduler().Stats().blocks_used, 3);
  b->Cancel();
  d.Drive();
  EXPECT_EQ(Tokens(a), Expected(Range(3, 8), 3));
  EXPECT_EQ(b->status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(d.scheduler().Stats().blocks_used, 0);
}

TEST(DisaggregatedSchedulerTest, AFailedTransferFailsItsRequestUnavailable) {
  Disaggregated d(DisaggregatedOptions(32, 2, 32));
  auto a = d.Submit(Range(3, 9), 5);
  auto b = d.Submit(Range(60, 12), 5);
  d.fail_seq = b->id();
  d.Drive();
  EXPECT_EQ(Tokens(a), Expected(Range(3, 9), 5));
  EXPECT_EQ(b->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(b->status().message()), ::testing::HasSubstr("KV transfer"));
  EXPECT_EQ(d.scheduler().Stats().kv_transfer_failures, 1);
  EXPECT_EQ(d.scheduler().Stats().blocks_used, 0);
}

TEST(DisaggregatedSchedulerTest, TheMainGroupFailingEndsOnlyTheRequestsNotYetDecoding) {
  Disaggregated d(DisaggregatedOptions(32, 1, 32), /*step_tokens=*/8);
  auto decoding = d.Submit(Range(3, 6), 6);
  auto plan = d.PlanMain();
  d.scheduler().Complete(d.RunMain(*plan));
  ASSERT_EQ(d.scheduler().Stats().decode_running, 1);
  auto prefilling = d.Submit(Range(70, 30), 6);  // four chunks of 8
  auto waiting = d.Submit(Range(20, 3), 6);
  plan = d.PlanMain();
  ASSERT_TRUE(plan);
  d.scheduler().FailMainGroup(absl::UnavailableError("a worker of the main group failed"));
  EXPECT_EQ(prefilling->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(waiting->status().code(), absl::StatusCode::kUnavailable);
  d.Drive();
  EXPECT_EQ(Tokens(decoding), Expected(Range(3, 6), 6));
  EXPECT_TRUE(decoding->status().ok());
  EXPECT_EQ(d.scheduler().Stats().blocks_used, 0);
}

// The main group failing while a transfer is in flight: a wedged rank could still push into the
// reserved decode blocks, so they are handed out again only after the push deadline.
TEST(DisaggregatedSchedulerTest, DecodeBlocksOfATransferCutByAMainFailureWaitForThePushDeadline) {
  SchedulerOptions o = DisaggregatedOptions(32, 1, 8);
  o.kv_push_deadline = absl::Milliseconds(300);
  Disaggregated d(o);
  auto a = d.Submit(Range(3, 9), 4);
  auto plan = d.PlanMain();
  ASSERT_EQ(plan->kv_transfers_size(), 1);  // 3 decode blocks reserved
  d.scheduler().FailMainGroup(
      absl::UnavailableError("the main group's step ran past its deadline"));
  EXPECT_EQ(a->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(d.scheduler().Stats().blocks_used, 3);
  EXPECT_FALSE(d.PlanDecode().has_value());
  EXPECT_EQ(d.scheduler().Stats().blocks_used, 3);  // not yet
  absl::SleepFor(absl::Milliseconds(350));
  EXPECT_FALSE(d.PlanDecode().has_value());
  EXPECT_EQ(d.scheduler().Stats().blocks_used, 0);
  // The decode group failing hands everything back at once.
  auto b = d.Submit(Range(30, 9), 4);
  plan = d.PlanMain();
  ASSERT_EQ(plan->kv_transfers_size(), 1);
  d.scheduler().FailMainGroup(absl::UnavailableError("main"));
  EXPECT_GT(d.scheduler().Stats().blocks_used, 0);
  d.scheduler().FailAll(absl::UnavailableError("decode"));
  EXPECT_EQ(d.scheduler().Stats().blocks_used, 0);
}

}  // namespace
}  // namespace moe
