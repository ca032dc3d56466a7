// The engine against HF transformers (tests/golden/make_goldens.py): prefill logits and 16
// decode steps per prompt, max |ours - ref| / max |ref| <= 1e-4, identical greedy tokens.
#include <algorithm>
#include <cmath>
#include <fstream>

#include "common/npy.h"
#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "model/model.h"
#include "model/rope.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"
#include "tools/model_maker.h"
#include "worker/engine.h"
#include "worker/generator.h"

namespace moe {
namespace {

using ::moe::testing::ScratchDir;

constexpr double kTolerance = 1e-4;

std::string GoldenDir() { return std::string(MOE_SOURCE_DIR) + "/tests/golden/data"; }

nlohmann::json Manifest() {
  std::ifstream in(GoldenDir() + "/manifest.json");
  return nlohmann::json::parse(in);
}

uint64_t Fnv1a64(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  uint64_t h = 0xcbf29ce484222325ull;
  char buf[1 << 16];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    for (std::streamsize i = 0; i < in.gcount(); ++i) {
      h = (h ^ static_cast<uint8_t>(buf[i])) * 0x100000001b3ull;
    }
  }
  return h;
}

struct GoldenCase {
  std::string name;
  nlohmann::json spec;
};

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    cpu::SetNumThreads(2);
    spec_ = Manifest()["cases"][GetParam()];
    auto config = PresetConfig(spec_["preset"]);
    ASSERT_TRUE(config.ok());
    MakeModelOptions opt;
    opt.out_dir = dir_.path();
    opt.seed = spec_["seed"];
    opt.dtype = *ParseWeightDType(spec_["dtype"]);
    ASSERT_TRUE(WriteCheckpoint(*config, opt).ok());
    char hex[17];
    std::snprintf(hex, sizeof(hex), "%016llx",
                  static_cast<unsigned long long>(Fnv1a64(dir_.file("model.safetensors"))));
    ASSERT_EQ(std::string(hex), spec_["checkpoint_fnv1a64"].get<std::string>())
        << "moe-make-model output changed since the goldens were made; regenerate them with "
           "tests/golden/make_goldens.py";
  }

  // A cache of `kv_blocks` blocks (0: 64 MB's worth).
  std::unique_ptr<Engine> LoadEngine(int64_t block_size,
                                     WeightsAtLoad weights = WeightsAtLoad::kAsStored,
                                     bool mtp = false, int64_t kv_blocks = 0) {
    auto config = LoadModelConfig(dir_.path());
    EXPECT_TRUE(config.ok());
    EngineOptions opt;
    opt.block_size = block_size;
    opt.weights = weights;
    opt.mtp = mtp;
    opt.kv_blocks = kv_blocks > 0
                        ? kv_blocks
                        : *KvCache::BlocksForBudget(*config, block_size, 64 << 20, mtp ? 1 : 0);
    auto e = Engine::Load(dir_.path(), ParallelContext::Single(*config), opt);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }

  void CheckAgainstGolden(const GenerateOptions& gen, int64_t block_size,
                          WeightsAtLoad weights = WeightsAtLoad::kAsStored, int64_t kv_blocks = 0) {
    auto engine = LoadEngine(block_size, weights, gen.speculative, kv_blocks);
    ASSERT_NE(engine, nullptr);
    BlockAllocator alloc(engine->num_blocks());
    for (size_t i = 0; i < spec_["prompts"].size(); ++i) {
      SCOPED_TRACE("prompt " + std::to_string(i));
      const std::vector<int32_t> prompt = spec_["prompts"][i];
      const std::vector<int32_t> want = spec_["tokens"][i];
      auto ref = ReadNpy(GoldenDir() + "/" + spec_["logits"][i].get<std::string>());
      ASSERT_TRUE(ref.ok()) << ref.status();
      auto got = GenerateGreedy(*engine, alloc, prompt, gen);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->tokens, want);
      ASSERT_EQ(got->logits.shape(), ref->shape());
      EXPECT_LE(::moe::testing::MaxRelativeError(got->logits, *ref), kTolerance);
      EXPECT_EQ(alloc.free_blocks(), alloc.total_blocks());  // every block returned
    }
  }

  ScratchDir dir_;
  nlohmann::json spec_;
};

GenerateOptions Greedy16() {
  GenerateOptions g;
  g.max_new_tokens = 16;
  return g;
}

TEST_P(GoldenTest, PrefillAndDecodeMatchTransformers) { CheckAgainstGolden(Greedy16(), 16); }

// The reference path: every weight converted to float32 at load instead of read in its format.
TEST_P(GoldenTest, WeightsWidenedToF32MatchTransformers) {
  CheckAgainstGolden(Greedy16(), 16, WeightsAtLoad::kF32);
}

TEST_P(GoldenTest, ChunkedPrefillAcrossBlocksMatchesTransformers) {
  GenerateOptions g = Greedy16();
  g.prefill_chunk = 7;  // chunks that straddle the 16-token blocks
  CheckAgainstGolden(g, 16);
}

TEST_P(GoldenTest, LargeBlocksMatchTransformers) { CheckAgainstGolden(Greedy16(), 64); }

TEST_P(GoldenTest, RecomputeWithoutCacheMatchesTransformers) {
  GenerateOptions g = Greedy16();
  g.use_cache = false;  // every step a full prefill: the expanded path only
  CheckAgainstGolden(g, 16);
}

TEST_P(GoldenTest, BatchEqualsSequencesRunAlone) {
  auto engine = LoadEngine(16);
  ASSERT_NE(engine, nullptr);
  BlockAllocator alloc(engine->num_blocks());
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& p : spec_["prompts"]) prompts.push_back(p.get<std::vector<int32_t>>());
  auto batch = GenerateGreedyBatch(*engine, alloc, prompts, Greedy16());
  ASSERT_TRUE(batch.ok()) << batch.status();
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto alone = GenerateGreedy(*engine, alloc, prompts[i], Greedy16());
    ASSERT_TRUE(alone.ok());
    EXPECT_EQ((*batch)[i].tokens, alone->tokens);
    EXPECT_LE(::moe::testing::MaxRelativeError((*batch)[i].logits, alone->logits), 1e-5);
  }
}

std::string CaseName(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (char& ch : s) ch = std::isalnum(ch) ? ch : '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Presets, GoldenTest,
                         ::testing::Values("tiny-dsv3-f32", "tiny-kimi-k2-f32", "tiny-v2lite-f32",
                                           "tiny-dsv3-fp8", "tiny-kimi-k2-int4", "tiny-qwen3-f32",
                                           "tiny-qwen3-moe-f32", "tiny-qwen3-moe-bf16",
                                           "tiny-mistral-f32", "tiny-smollm3-f32", "tiny-olmo2-f32",
                                           "tiny-gemma3-f32", "tiny-gemma3-bf16", "tiny-llama4-f32",
                                           "tiny-llama4-bf16"),
                         CaseName);

// Window layer groups (Gemma 3's sliding layers, Llama 4's chunked ones) give back the blocks their
// window has passed: a cache that holds the longest sequence only that way (KvLayout::MostBlocks
// for 4-token chunks in blocks of 4, well under a whole table per group) serves every prompt,
// equal to transformers. A freed block is handed out again at once, so a layer that still read
// one would read other positions' keys.
class WindowKvGoldenTest : public GoldenTest {};

TEST_P(WindowKvGoldenTest, CacheHoldingOnlyTheWindowsMatchesTransformers) {
  GenerateOptions g = Greedy16();
  g.prefill_chunk = 4;
  auto config = LoadModelConfig(dir_.path());
  ASSERT_TRUE(config.ok());
  const KvLayout layout = KvLayout::For(*config);
  ASSERT_GT(layout.window_groups(), 0);
  int64_t longest = 0;
  for (const auto& p : spec_["prompts"]) longest = std::max<int64_t>(longest, p.size() + 16);
  const int64_t blocks = layout.MostBlocks(longest, 4, 4);
  EXPECT_LT(2 * blocks, static_cast<int64_t>(layout.groups.size()) * ((longest + 3) / 4));
  CheckAgainstGolden(g, 4, WeightsAtLoad::kAsStored, blocks);
}

INSTANTIATE_TEST_SUITE_P(Presets, WindowKvGoldenTest,
                         ::testing::Values("tiny-gemma3-f32", "tiny-llama4-f32"), CaseName);

// Speculative decoding with the MTP layer (the presets that have one): the same tokens and logits
// as transformers without speculation.
class MtpGoldenTest : public GoldenTest {};

TEST_P(MtpGoldenTest, SpeculativeDecodingMatchesTransformers) {
  GenerateOptions g = Greedy16();
  g.speculative = true;
  CheckAgainstGolden(g, 16);
  g.prefill_chunk = 7;
  CheckAgainstGolden(g, 16);
}

// The MTP layer's own forward against the torch implementation in make_goldens.py: the draft
// logits of every prompt position, t_{i+1} the prompt's next token (the first greedy token last).
class MtpReferenceTest : public GoldenTest {};

TEST_P(MtpReferenceTest, MtpLayerMatchesTheTorchReference) {
  const nlohmann::json mtp = Manifest()["mtp"]["cases"][GetParam()];
  auto config = LoadModelConfig(dir_.path());
  ASSERT_TRUE(config.ok());
  auto ctx = ParallelContext::Single(*config);
  const KvCacheShape cache{*KvCache::BlocksForBudget(*config, 16, 16 << 20, 1), 16};
  auto model = DecoderModel::Load(dir_.path(), *config, *ctx, cache, {.load_mtp = true});
  ASSERT_TRUE(model.ok()) << model.status();
  const RotaryEmbedding rope(*config);
  for (size_t i = 0; i < mtp["prompts"].size(); ++i) {
    SCOPED_TRACE("prompt " + std::to_string(i));
    const std::vector<int32_t> prompt = mtp["prompts"][i];
    const std::vector<int32_t> next = mtp["next_tokens"][i];
    const int64_t n = static_cast<int64_t>(prompt.size());
    std::vector<int32_t> blocks;
    for (int64_t b = 0; b * 16 < n; ++b) blocks.push_back(static_cast<int32_t>(b));
    ForwardBatch batch;
    batch.chunks.push_back({0, n, 0, &blocks});
    std::vector<int64_t> rows;
    for (int64_t t = 0; t < n; ++t) {
      batch.positions.push_back(t);
      rows.push_back(t);
    }
    rope.SetAngles(batch);
    ASSERT_TRUE((*model)->Forward(prompt, batch, {n - 1}).ok());
    auto logits = (*model)->ForwardMtp(rows, next, batch, rows);
    ASSERT_TRUE(logits.ok()) << logits.status();
    auto ref = ReadNpy(GoldenDir() + "/" + mtp["logits"][i].get<std::string>());
    ASSERT_TRUE(ref.ok()) << ref.status();
    ASSERT_EQ(logits->shape(), ref->shape());
    const double err = ::moe::testing::MaxRelativeError(*logits, *ref);
    std::printf("MTP logits, prompt of %lld: max |ours - ref| / max |ref| = %.2e\n",
                static_cast<long long>(n), err);
    EXPECT_LE(err, kTolerance);
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, MtpGoldenTest,
                         ::testing::Values("tiny-dsv3-f32", "tiny-dsv3-fp8"), CaseName);
// The cases make_goldens.py has MTP goldens for (MTP_CASES).
INSTANTIATE_TEST_SUITE_P(Presets, MtpReferenceTest, ::testing::Values("tiny-dsv3-f32"), CaseName);

}  // namespace
}  // namespace moe
