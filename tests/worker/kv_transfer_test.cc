// Moving a sequence's latent KV between worker groups: a push over a loopback gRPC port writes
// exactly the rows of the positions it covers into the receiver's blocks, refuses what does not
// fit, and a sequence prefilled by one engine and decoded by another (the KV pushed in the same
// step runner call that computed it) gives the tokens of one engine doing both.
#include "worker/kv_transfer.h"

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/ops.h"
#include "tests/test_util.h"
#include "tools/model_maker.h"
#include "worker/generator.h"
#include "worker/step_runner.h"

namespace moe {
namespace {

using ::moe::testing::ScratchDir;
using ::testing::HasSubstr;

// A value no two (layer, block, position, element) of a cache share.
float Pattern(int64_t layer, int32_t block, int64_t pos, int64_t d) {
  return static_cast<float>(layer * 1000000 + block * 10000 + pos * 100 + d % 97) + 0.25f;
}

constexpr float kUntouched = -7.5f;

void Fill(KvCache& cache, bool pattern) {
  for (int64_t l = 0; l < cache.layers(); ++l) {
    for (int32_t b = 0; b < cache.num_blocks(); ++b) {
      for (int64_t r = 0; r < cache.block_size(); ++r) {
        float* row = cache.Row(l, b, r);
        for (int64_t d = 0; d < cache.dim(); ++d)
          row[d] = pattern ? Pattern(l, b, r, d) : kUntouched;
      }
    }
  }
}

class KvTransferTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = *PresetConfig("tiny-dsv3");
    layout_ = KvLayout::For(config_, 1);  // with the MTP layer's cache layer
  }
  CpuOps ops_;
  KvCache MakeCache(int64_t blocks) {
    return KvCache(ops_, layout_, blocks, 16, config_.kv_cache_dim());
  }
  moe::v1::KvPushHeader Header(const std::string& session, int64_t tokens,
                               std::vector<int32_t> blocks) {
    moe::v1::KvPushHeader h;
    h.set_session(session);
    h.set_seq_id(7);
    h.set_tokens(tokens);
    h.mutable_blocks()->Add(blocks.begin(), blocks.end());
    return h;
  }
  ModelConfig config_;
  KvLayout layout_;
};

TEST_F(KvTransferTest, PushWritesExactlyThePositionsRowsIntoTheReservedBlocks) {
  KvCache from = MakeCache(12), to = MakeCache(10);
  Fill(from, true);
  Fill(to, false);
  auto server = KvTransferServer::Start("127.0.0.1:0", &to, "decode-1");
  ASSERT_TRUE(server.ok()) << server.status();
  KvPusher pusher;
  const std::vector<int32_t> src = {5, 2, 9}, dst = {1, 7, 3};
  const int64_t tokens = 37;  // 16 + 16 + 5
  auto bytes = pusher.Push(absl::StrCat("127.0.0.1:", (*server)->port()), from,
                           Header("decode-1", tokens, dst), src);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  // The latent size: tokens x cache layers (4 decoder + 1 MTP) x (kv_lora_rank + rope dim) floats.
  const int64_t latent = tokens * (config_.num_hidden_layers + 1) *
                         (config_.kv_lora_rank + config_.qk_rope_head_dim) * 4;
  EXPECT_EQ(*bytes, latent);
  EXPECT_EQ(KvTransferBytes(from, tokens), latent);
  (*server)->Fence();
  EXPECT_EQ((*server)->bytes_received(), latent);
  int64_t copied = 0, untouched = 0;
  for (int64_t l = 0; l < to.layers(); ++l) {
    for (int32_t b = 0; b < to.num_blocks(); ++b) {
      const auto it = std::find(dst.begin(), dst.end(), b);
      for (int64_t r = 0; r < to.block_size(); ++r) {
        const int64_t pos = (it - dst.begin()) * 16 + r;
        const bool sent = it != dst.end() && pos < tokens;
        const float* row = to.Row(l, b, r);
        for (int64_t d = 0; d < to.dim(); ++d) {
          const float want = sent ? Pattern(l, src[it - dst.begin()], r, d) : kUntouched;
          ASSERT_EQ(row[d], want) << "layer " << l << " block " << b << " row " << r;
        }
        (sent ? copied : untouched) += 1;
      }
    }
  }
  EXPECT_EQ(copied, tokens * to.layers());
  EXPECT_GT(untouched, 0);
}

TEST_F(KvTransferTest, RefusesPushesThatDoNotFit) {
  KvCache from = MakeCache(4), to = MakeCache(4);
  auto server = KvTransferServer::Start("127.0.0.1:0", &to, "decode-2");
  ASSERT_TRUE(server.ok());
  const std::string address = absl::StrCat("127.0.0.1:", (*server)->port());
  KvPusher pusher;
  auto stale = pusher.Push(address, from, Header("decode-1", 20, {0, 1}), {2, 3});
  EXPECT_THAT(stale.status().message(), HasSubstr("session decode-1"));
  auto outside = pusher.Push(address, from, Header("decode-2", 20, {0, 4}), {2, 3});
  EXPECT_THAT(outside.status().message(), HasSubstr("block 4 is outside"));
  auto uncovered = pusher.Push(address, from, Header("decode-2", 40, {0, 1}), {2, 3});
  EXPECT_THAT(uncovered.status().message(), HasSubstr("do not cover"));
  auto local = pusher.Push(address, from, Header("decode-2", 20, {0, 1}), {2, 9});
  EXPECT_THAT(local.status().message(), HasSubstr("block 9 is outside this cache"));
  KvCache other(ops_, KvLayout::For(config_, 0), 4, 16, config_.kv_cache_dim());  // no MTP layer
  auto shape = pusher.Push(address, other, Header("decode-2", 20, {0, 1}), {2, 3});
  EXPECT_THAT(shape.status().message(), HasSubstr("differs from this cache's"));
  EXPECT_EQ((*server)->bytes_received(), 0);
  auto nobody =
      pusher.Push("127.0.0.1:1", from, Header("decode-2", 20, {0, 1}), {2, 3}, absl::Seconds(5));
  EXPECT_EQ(nobody.status().code(), absl::StatusCode::kUnavailable);
}

// With the cluster's certificates the push is mutual TLS: a sender with the cluster CA's
// certificate gets through; plaintext and another CA's certificate do not, and write nothing.
TEST_F(KvTransferTest, MutualTlsWithTheClusterCa) {
  ScratchDir dir;
  const std::string certs = dir.file("certs"), other = dir.file("other");
  for (const std::string& d : {certs, other}) {
    auto made = ::moe::testing::RunCommand(
        absl::StrCat(MOE_SOURCE_DIR, "/deploy/tls/make-test-certs.sh ", d));
    ASSERT_EQ(made.exit_code, 0) << made.err;
  }
  auto identity = [](const std::string& d) {
    return *ReadTlsFiles({d + "/cluster.pem", d + "/cluster.key", d + "/cluster-ca.pem"},
                         {"cert", "key", "ca"});
  };
  const TlsPem mine = identity(certs), foreign = identity(other);
  KvCache from = MakeCache(4), to = MakeCache(4);
  Fill(from, true);
  Fill(to, false);
  auto server = KvTransferServer::Start("127.0.0.1:0", &to, "d", &mine);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = absl::StrCat("127.0.0.1:", (*server)->port());
  KvPusher plaintext, stranger(&foreign), member(&mine);
  EXPECT_EQ(plaintext.Push(address, from, Header("d", 20, {0, 1}), {2, 3}, absl::Seconds(5))
                .status()
                .code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(stranger.Push(address, from, Header("d", 20, {0, 1}), {2, 3}, absl::Seconds(5))
                .status()
                .code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ((*server)->bytes_received(), 0);
  EXPECT_EQ(to.Row(0, 0, 0)[0], kUntouched);
  auto ok = member.Push(address, from, Header("d", 20, {0, 1}), {2, 3});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, KvTransferBytes(from, 20));
  (*server)->Fence();
  EXPECT_EQ(to.Row(0, 0, 0)[0], Pattern(0, 2, 0, 0));
}

// One engine prefills (the step that computes the prompt also pushes it), another decodes from
// the pushed blocks: the greedy tokens of one engine doing both.
TEST(DisaggregatedStepTest, PrefillOnOneEngineDecodeOnAnotherGivesOneEnginesTokens) {
  cpu::SetNumThreads(2);
  ScratchDir dir;
  MakeModelOptions opt;
  opt.out_dir = dir.path();
  opt.seed = 11;
  ASSERT_TRUE(WriteCheckpoint(*PresetConfig("tiny-dsv3"), opt).ok());
  auto config = LoadModelConfig(dir.path());
  EngineOptions eo;
  eo.block_size = 16;
  eo.kv_blocks = 24;
  auto prefill = Engine::Load(dir.path(), ParallelContext::Single(*config), eo);
  auto decode = Engine::Load(dir.path(), ParallelContext::Single(*config), eo);
  ASSERT_TRUE(prefill.ok() && decode.ok());
  std::vector<int32_t> prompt;
  for (int j = 0; j < 41; ++j) prompt.push_back((j * 37 + 5) % 512);
  constexpr int kNew = 10;
  BlockAllocator alloc((*prefill)->num_blocks());
  GenerateOptions g;
  g.max_new_tokens = kNew;
  auto want = GenerateGreedy(**prefill, alloc, prompt, g);
  ASSERT_TRUE(want.ok());

  auto server = KvTransferServer::Start("127.0.0.1:0", (*decode)->host_kv_cache(), "d");
  ASSERT_TRUE(server.ok());
  StepRunner main_runner(**prefill), decode_runner(**decode, server->get());
  moe::v1::StepPlan plan;
  plan.set_step(1);
  const std::vector<int32_t> prefill_blocks = {20, 4, 11};
  moe::v1::SequencePlan* s = plan.add_sequences();
  s->set_seq_id(3);
  s->mutable_tokens()->Add(prompt.begin(), prompt.end());
  s->mutable_block_table()->Add(prefill_blocks.begin(), prefill_blocks.end());
  s->set_sample(true);
  moe::v1::KvTransferPlan* t = plan.add_kv_transfers();
  t->set_seq_id(3);
  t->mutable_blocks()->Add(prefill_blocks.begin(), prefill_blocks.end());
  t->set_tokens(static_cast<int64_t>(prompt.size()));
  t->set_session("d");
  const std::vector<int32_t> decode_blocks = {2, 17, 8, 5};  // 41 + 10 positions
  t->mutable_decode_blocks()->Add(decode_blocks.begin(), decode_blocks.begin() + 3);
  moe::v1::KvPeer* peer = t->add_peers();
  peer->set_address(absl::StrCat("127.0.0.1:", (*server)->port()));
  auto first = main_runner.Run(plan);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->kv_transfers_size(), 1);
  EXPECT_TRUE(first->kv_transfers(0).ok());
  EXPECT_EQ(first->kv_transfers(0).bytes(),
            KvTransferBytes(*(*prefill)->host_kv_cache(), static_cast<int64_t>(prompt.size())));
  ASSERT_EQ(first->tokens_size(), 1);
  std::vector<int32_t> got = {first->tokens(0)};
  while (static_cast<int>(got.size()) < kNew) {
    moe::v1::StepPlan next;
    next.set_step(static_cast<int64_t>(got.size()) + 1);
    moe::v1::SequencePlan* d = next.add_sequences();
    d->set_seq_id(3);
    d->add_tokens(got.back());
    d->set_start_pos(static_cast<int64_t>(prompt.size() + got.size()) - 1);
    d->mutable_block_table()->Add(decode_blocks.begin(), decode_blocks.end());
    d->set_sample(true);
    d->set_sample_index(static_cast<int64_t>(got.size()));
    auto r = decode_runner.Run(next);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->tokens_size(), 1);
    got.push_back(r->tokens(0));
  }
  EXPECT_EQ(got, want->tokens);

  // A push that fails (nobody listens there) is reported, not an error of the step.
  moe::v1::StepPlan lost;
  lost.set_step(99);
  *lost.add_kv_transfers() = plan.kv_transfers(0);
  lost.mutable_kv_transfers(0)->mutable_peers(0)->set_address("127.0.0.1:1");
  auto r = main_runner.Run(lost);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->kv_transfers_size(), 1);
  EXPECT_FALSE(r->kv_transfers(0).ok());
  EXPECT_EQ(r->tokens_size(), 0);
}

}  // namespace
}  // namespace moe
