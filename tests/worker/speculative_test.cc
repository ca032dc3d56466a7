// Speculative decoding with DeepSeek-V3's MTP layer: greedy outputs equal the engine's without
// it, drafts are checked against the target (accepted up to the first disagreement), chunked
// prefill keeps the MTP layer's cache whole, and bad requests are refused.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "tests/test_util.h"
#include "tools/model_maker.h"
#include "worker/engine.h"
#include "worker/generator.h"

namespace moe {
namespace {

using ::moe::testing::ScratchDir;
using ::testing::HasSubstr;

class SpeculativeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cpu::SetNumThreads(2);
    dir_ = new ScratchDir();
    MakeModelOptions opt;
    opt.out_dir = dir_->path();
    opt.seed = 5;
    ASSERT_TRUE(WriteCheckpoint(*PresetConfig("tiny-dsv3"), opt).ok());
  }
  static void TearDownTestSuite() { delete dir_; }

  static std::unique_ptr<Engine> Load(bool mtp, int64_t block_size = 16, int draft_tokens = 1,
                                      const std::string& dir = "") {
    const std::string path = dir.empty() ? dir_->path() : dir;
    auto config = LoadModelConfig(path);
    EngineOptions opt;
    opt.block_size = block_size;
    opt.mtp = mtp;
    opt.mtp_draft_tokens = draft_tokens;
    opt.kv_blocks = *KvCache::BlocksForBudget(*config, block_size, 8 << 20, mtp ? 1 : 0);
    auto e = Engine::Load(path, ParallelContext::Single(*config), opt);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }
  static std::vector<int32_t> Prompt(int n, int salt) {
    std::vector<int32_t> p;
    for (int i = 0; i < n; ++i) p.push_back((i * 53 + salt * 17 + 3) % 500);
    return p;
  }
  static ScratchDir* dir_;
};
ScratchDir* SpeculativeTest::dir_ = nullptr;

TEST_F(SpeculativeTest, GreedyOutputsAndLogitsEqualThoseWithoutIt) {
  auto plain = Load(false), spec = Load(true);
  ASSERT_TRUE(plain && spec);
  int64_t drafts = 0, accepted = 0;
  for (int n : {1, 17, 40}) {
    for (int64_t chunk : {0, 7}) {
      const std::vector<int32_t> prompt = Prompt(n, n + static_cast<int>(chunk));
      GenerateOptions g;
      g.max_new_tokens = 24;
      g.prefill_chunk = chunk;
      BlockAllocator a1(plain->num_blocks()), a2(spec->num_blocks());
      auto want = GenerateGreedy(*plain, a1, prompt, g);
      g.speculative = true;
      auto got = GenerateGreedy(*spec, a2, prompt, g);
      ASSERT_TRUE(want.ok() && got.ok()) << want.status() << got.status();
      EXPECT_EQ(got->tokens, want->tokens) << "prompt " << n << ", chunk " << chunk;
      ASSERT_EQ(got->logits.shape(), want->logits.shape());
      EXPECT_LT(::moe::testing::MaxRelativeError(got->logits, want->logits), 1e-5);
      EXPECT_EQ(a2.free_blocks(), spec->num_blocks());
      EXPECT_GT(got->drafts, 0);
      EXPECT_LE(got->steps, want->steps);
      drafts += got->drafts;
      accepted += got->accepted;
    }
  }
  std::printf("MTP drafts accepted: %lld of %lld\n", static_cast<long long>(accepted),
              static_cast<long long>(drafts));
}

// k > 1 drafts a step, the MTP layer applied again to its own output: the same greedy tokens and
// logits, batched and alone, with chunked prefill; with random MTP weights few are accepted.
TEST_F(SpeculativeTest, SeveralDraftTokensKeepOutputs) {
  auto plain = Load(false);
  ASSERT_TRUE(plain);
  for (int k : {2, 3}) {
    auto spec = Load(true, 16, k);
    ASSERT_TRUE(spec);
    const std::vector<std::vector<int32_t>> prompts = {Prompt(1, 4), Prompt(17, 5), Prompt(40, 6)};
    for (int64_t chunk : {0, 7}) {
      GenerateOptions g;
      g.max_new_tokens = 23;
      g.prefill_chunk = chunk;
      BlockAllocator a1(plain->num_blocks()), a2(spec->num_blocks());
      auto want = GenerateGreedyBatch(*plain, a1, prompts, g);
      g.speculative = true;
      auto got = GenerateGreedyBatch(*spec, a2, prompts, g);
      ASSERT_TRUE(want.ok() && got.ok()) << want.status() << got.status();
      for (size_t i = 0; i < prompts.size(); ++i) {
        SCOPED_TRACE(absl::StrCat("k=", k, " chunk=", chunk, " prompt ", i));
        EXPECT_EQ((*got)[i].tokens, (*want)[i].tokens);
        EXPECT_LT(::moe::testing::MaxRelativeError((*got)[i].logits, (*want)[i].logits), 1e-5);
        EXPECT_GT((*got)[i].drafts, 0);
      }
      EXPECT_EQ(a2.free_blocks(), spec->num_blocks());
    }
  }
}

// An MTP layer that drafts what the model will say (MakeModelOptions::mtp_agrees): every one of
// k drafts is accepted, so a step gives k + 1 tokens, and the outputs stay the model's own.
TEST_F(SpeculativeTest, AgreeingDraftsGiveKPlusOneTokensAStep) {
  ScratchDir agrees;
  MakeModelOptions opt;
  opt.out_dir = agrees.path();
  opt.seed = 7;
  opt.mtp_agrees = true;
  ASSERT_TRUE(WriteCheckpoint(*PresetConfig("tiny-dsv3"), opt).ok());
  auto plain = Load(false, 16, 1, agrees.path());
  ASSERT_TRUE(plain);
  for (int k : {1, 3}) {
    auto spec = Load(true, 16, k, agrees.path());
    ASSERT_TRUE(spec);
    GenerateOptions g;
    g.max_new_tokens = 33;
    BlockAllocator a1(plain->num_blocks()), a2(spec->num_blocks());
    auto want = GenerateGreedy(*plain, a1, Prompt(9, 8), g);
    g.speculative = true;
    auto got = GenerateGreedy(*spec, a2, Prompt(9, 8), g);
    ASSERT_TRUE(want.ok() && got.ok()) << want.status() << got.status();
    EXPECT_EQ(got->tokens, want->tokens) << "k=" << k;
    EXPECT_EQ(got->accepted, got->drafts) << "k=" << k;
    // The prefill step gives one token; every later step k + 1 (the last may give fewer).
    EXPECT_LE(got->steps, 1 + (32 + k) / (k + 1) + 1) << "k=" << k;
    EXPECT_GE(got->drafts, 32 - (32 + k) / (k + 1)) << "k=" << k;
  }
}

TEST_F(SpeculativeTest, BatchedSequencesEqualThoseWithoutIt) {
  auto plain = Load(false), spec = Load(true);
  ASSERT_TRUE(plain && spec);
  const std::vector<std::vector<int32_t>> prompts = {Prompt(5, 1), Prompt(30, 2), Prompt(12, 3)};
  GenerateOptions g;
  g.max_new_tokens = 20;
  BlockAllocator a1(plain->num_blocks()), a2(spec->num_blocks());
  auto want = GenerateGreedyBatch(*plain, a1, prompts, g);
  g.speculative = true;
  auto got = GenerateGreedyBatch(*spec, a2, prompts, g);
  ASSERT_TRUE(want.ok() && got.ok());
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ((*got)[i].tokens, (*want)[i].tokens) << i;
    EXPECT_LT(::moe::testing::MaxRelativeError((*got)[i].logits, (*want)[i].logits), 1e-5) << i;
  }
}

// Drafts given by hand: the right next token is accepted (two tokens in one step), a wrong one
// is replaced by the target's token.
TEST_F(SpeculativeTest, DraftsAreAcceptedUpToTheFirstDisagreement) {
  auto plain = Load(false), spec = Load(true);
  ASSERT_TRUE(plain && spec);
  const std::vector<int32_t> prompt = Prompt(9, 4);
  GenerateOptions g;
  g.max_new_tokens = 4;
  BlockAllocator a1(plain->num_blocks());
  auto truth = GenerateGreedy(*plain, a1, prompt, g);
  ASSERT_TRUE(truth.ok());
  const std::vector<int32_t>& t = truth->tokens;

  std::vector<int32_t> blocks;
  BlockAllocator alloc(spec->num_blocks());
  ASSERT_TRUE(alloc.EnsureCapacity(&blocks, 16, spec->block_size()).ok());
  SequenceStep s;
  s.seq_id = 1;
  s.tokens = prompt;
  s.block_table = blocks;
  s.sample = SampleRequest{};
  auto prefill = spec->Step({s});
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  ASSERT_EQ(prefill->tokens[0], t[0]);
  // [t0, t1 as the draft]: accepted, and t2 follows in the same step.
  s.start_pos = static_cast<int64_t>(prompt.size());
  s.tokens = {t[0], t[1]};
  s.num_draft = 1;
  auto right = spec->Step({s});
  ASSERT_TRUE(right.ok()) << right.status();
  EXPECT_EQ(right->tokens[0], t[1]);
  EXPECT_THAT(right->next_tokens[0], ::testing::ElementsAre(t[2]));
  EXPECT_EQ(right->logits.dim(0), 2);
  // [t2, a wrong draft]: the target's t3 replaces it, nothing follows.
  s.start_pos += 2;
  s.tokens = {t[2], (t[3] + 1) % 500};
  auto wrong = spec->Step({s});
  ASSERT_TRUE(wrong.ok()) << wrong.status();
  EXPECT_EQ(wrong->tokens[0], t[3]);
  EXPECT_TRUE(wrong->next_tokens[0].empty());
}

// The MTP layer's cache after a prefill in chunks (each but the last given its lookahead token)
// is the one of a whole prefill: the same drafts follow.
TEST_F(SpeculativeTest, ChunkedPrefillDraftsAsAWholePrefill) {
  auto spec = Load(true);
  ASSERT_TRUE(spec);
  const std::vector<int32_t> prompt = Prompt(23, 6);
  auto run = [&](size_t chunk) {
    std::vector<int32_t> blocks;
    BlockAllocator alloc(spec->num_blocks());
    EXPECT_TRUE(alloc.EnsureCapacity(&blocks, 32, spec->block_size()).ok());
    std::vector<int32_t> drafts;
    for (size_t at = 0; at < prompt.size(); at += chunk) {
      const size_t end = std::min(prompt.size(), at + chunk);
      SequenceStep s;
      s.seq_id = 1;
      s.tokens.assign(prompt.begin() + static_cast<std::ptrdiff_t>(at),
                      prompt.begin() + static_cast<std::ptrdiff_t>(end));
      s.start_pos = static_cast<int64_t>(at);
      s.block_table = blocks;
      s.mtp = true;
      s.want_logits = end == prompt.size();
      if (s.want_logits) {
        s.sample = SampleRequest{};
      } else {
        s.lookahead = prompt[end];
      }
      auto out = spec->Step({s});
      EXPECT_TRUE(out.ok()) << out.status();
      if (out.ok() && s.want_logits) {
        EXPECT_EQ(out->drafts[0].size(), 1u);
        drafts = {out->tokens[0], out->drafts[0].empty() ? -1 : out->drafts[0][0]};
      }
    }
    return drafts;
  };
  const std::vector<int32_t> whole = run(prompt.size());
  ASSERT_EQ(whole.size(), 2u);
  EXPECT_GE(whole[1], 0);
  EXPECT_EQ(run(5), whole);
  EXPECT_EQ(run(1), whole);
}

TEST_F(SpeculativeTest, RefusesWhatItCannotRun) {
  auto plain = Load(false), spec = Load(true);
  ASSERT_TRUE(plain && spec);
  auto expect = [](Engine& e, const SequenceStep& s, const std::string& what) {
    auto r = e.Step({s});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(what));
  };
  SequenceStep s;
  s.seq_id = 3;
  s.tokens = {1, 2, 3};
  s.block_table = {0};
  s.mtp = true;
  s.sample = SampleRequest{};
  expect(*plain, s, "did not load");
  SequenceStep chunk = s;
  chunk.want_logits = false;
  chunk.sample.reset();
  expect(*spec, chunk, "lookahead");
  SequenceStep drafts = s;
  drafts.num_draft = 3;
  expect(*spec, drafts, "3 drafts among 3 tokens");
  drafts.num_draft = 1;
  drafts.sample.reset();
  expect(*spec, drafts, "need want_logits and a sample");
  drafts.sample = SampleRequest{{0.7f, 0, 1.0f, 1}, 0, /*logprobs=*/true, 0};
  expect(*spec, drafts, "log-probabilities");
}

// Seeded sampling with drafts is reproducible, and every token is one the target could sample.
TEST_F(SpeculativeTest, SeededSamplingWithDraftsIsReproducible) {
  auto spec = Load(true);
  ASSERT_TRUE(spec);
  auto run = [&] {
    std::vector<int32_t> blocks, out;
    BlockAllocator alloc(spec->num_blocks());
    EXPECT_TRUE(alloc.EnsureCapacity(&blocks, 48, spec->block_size()).ok());
    SequenceStep s;
    s.seq_id = 1;
    s.tokens = Prompt(6, 9);
    s.block_table = blocks;
    s.mtp = true;
    uint64_t index = 0;
    while (out.size() < 20) {
      s.sample = SampleRequest{{0.9f, 40, 0.95f, 1234}, index};
      auto r = spec->Step({s});
      EXPECT_TRUE(r.ok()) << r.status();
      if (!r.ok()) break;
      std::vector<int32_t> made = {r->tokens[0]};
      made.insert(made.end(), r->next_tokens[0].begin(), r->next_tokens[0].end());
      out.insert(out.end(), made.begin(), made.end());
      index += made.size();
      s.start_pos += static_cast<int64_t>(s.tokens.size()) - s.num_draft +
                     static_cast<int64_t>(made.size()) - 1;
      EXPECT_EQ(r->drafts[0].size(), 1u);
      if (r->drafts[0].empty()) break;
      s.tokens = {made.back(), r->drafts[0][0]};
      s.num_draft = 1;
    }
    return out;
  };
  const std::vector<int32_t> a = run();
  EXPECT_EQ(run(), a);
  EXPECT_GE(a.size(), 20u);
}

}  // namespace
}  // namespace moe
