// moe-make-model output loads back: every tensor of every preset, with the shape its config
// implies, holding the generator's values (f32), their bf16 rounding, or their fp8 block
// quantization.
#include <cmath>
#include <fstream>

#include "checkpoint/checkpoint.h"
#include "checkpoint/weight_names.h"
#include "common/dtype.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "text/tokenizer_files.h"
#include "tools/model_maker.h"
#include "tools/tokenizer_maker.h"

namespace moe {
namespace {

using ::moe::testing::ScratchDir;

void WriteAndLoadBack(const std::string& preset, WeightDType dtype, uint64_t max_shard_bytes) {
  ScratchDir dir;
  auto config = PresetConfig(preset);
  ASSERT_TRUE(config.ok()) << config.status();
  MakeModelOptions opt;
  opt.out_dir = dir.path();
  opt.seed = 7;
  opt.dtype = dtype;
  opt.max_shard_bytes = max_shard_bytes;
  ASSERT_TRUE(WriteCheckpoint(*config, opt).ok());

  auto written = LoadModelConfig(dir.path());
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(written->quantization_config.has_value(), dtype == WeightDType::kFP8);
  auto ck = Checkpoint::Open(dir.path(), written->quantization_config);
  ASSERT_TRUE(ck.ok()) << ck.status();
  for (const WeightSpec& spec : CheckpointWeightSpecs(*written, /*include_mtp=*/true)) {
    auto t = (*ck)->Load(spec.name, spec.shape);
    ASSERT_TRUE(t.ok()) << t.status();
    auto stored = (*ck)->Describe(spec.name);
    ASSERT_TRUE(stored.ok());
    if (dtype == WeightDType::kFP8) {
      EXPECT_EQ(stored->dtype == DType::kF8E4M3, spec.quantizable()) << spec.name;
    }
    // Spot-check values against the generator (independent of the writer/reader path).
    const int64_t n = t->numel();
    for (int64_t i : {int64_t{0}, n / 3, n - 1}) {
      const float want = GeneratedValue(spec, 7, static_cast<uint64_t>(i));
      const float got = (*t)[i];
      ASSERT_TRUE(std::isfinite(got)) << spec.name;
      if (stored->dtype == DType::kF32) {
        EXPECT_EQ(got, want) << spec.name << "[" << i << "]";
      } else if (stored->dtype == DType::kBF16) {
        EXPECT_EQ(got, BF16ToF32(F32ToBF16(want))) << spec.name << "[" << i << "]";
      } else {  // fp8 e4m3: 3 mantissa bits, relative error <= 2^-4 above the block's subnormals
        EXPECT_NEAR(got, want, std::fabs(want) * 0.0625f + 1e-3f) << spec.name << "[" << i << "]";
      }
    }
  }
  // Nothing beyond the expected tensors (and fp8 scales) was written.
  size_t expected = 0;
  for (const WeightSpec& spec : CheckpointWeightSpecs(*written, true)) {
    expected += (dtype == WeightDType::kFP8 && spec.quantizable()) ? 2 : 1;
  }
  EXPECT_EQ((*ck)->TensorNames().size(), expected);
}

TEST(MakeModelTest, TinyPresetsLoadBackInEveryDtype) {
  for (const char* preset : {"tiny-dsv3", "tiny-kimi-k2", "tiny-v2lite"}) {
    for (WeightDType d : {WeightDType::kF32, WeightDType::kBF16, WeightDType::kFP8}) {
      SCOPED_TRACE(preset);
      WriteAndLoadBack(preset, d, 4ull << 30);
    }
  }
}

TEST(MakeModelTest, ShardedOutputLoadsBack) {
  WriteAndLoadBack("tiny-dsv3", WeightDType::kBF16, 64 << 10);  // many 64 KiB shards + index
}

TEST(MakeModelTest, SmallPresetLoadsBack) {
  WriteAndLoadBack("small-dsv3", WeightDType::kFP8, 512ull << 20);
}

TEST(MakeModelTest, SameSeedSameBytesOtherSeedOtherBytes) {
  auto config = PresetConfig("tiny-kimi-k2");
  ASSERT_TRUE(config.ok());
  auto make = [&](uint64_t seed, const std::string& dir) {
    MakeModelOptions opt;
    opt.out_dir = dir;
    opt.seed = seed;
    ASSERT_TRUE(WriteCheckpoint(*config, opt).ok());
  };
  ScratchDir a, b, c;
  make(1, a.path());
  make(1, b.path());
  make(2, c.path());
  auto read = [](const std::string& p) {
    std::ifstream in(p + "/model.safetensors", std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  EXPECT_EQ(read(a.path()), read(b.path()));
  EXPECT_NE(read(a.path()), read(c.path()));
}

TEST(MakeModelTest, RouterBiasIsPositiveAndNonZero) {
  auto config = PresetConfig("tiny-dsv3");
  ASSERT_TRUE(config.ok());
  for (const WeightSpec& spec : CheckpointWeightSpecs(*config, false)) {
    if (spec.kind != WeightSpec::Kind::kRouterBias) continue;
    for (uint64_t i = 0; i < 16; ++i) EXPECT_GT(GeneratedValue(spec, 3, i), 0.0f);
  }
}

TEST(MakeModelTest, UnknownPreset) { EXPECT_FALSE(PresetConfig("gpt-5").ok()); }

}  // namespace
}  // namespace moe

namespace moe {
namespace {

// Every preset gets its family's tokenizer: it loads, its ids fit the model's vocabulary, text
// round-trips, and the special tokens are where the family puts them. (Equality with the HF
// tokenizers/tiktoken libraries on the corpus is tests/text/tokenizer_parity.py.)
TEST(MakeModelTest, TokenizerOfEveryPresetLoadsAndRoundTrips) {
  for (const char* preset : {"tiny-dsv3", "tiny-v2lite", "tiny-kimi-k2", "small-dsv3"}) {
    SCOPED_TRACE(preset);
    ScratchDir dir;
    auto config = PresetConfig(preset);
    ASSERT_TRUE(config.ok());
    ASSERT_TRUE(WriteTokenizer(*config, dir.path()).ok());
    auto tok = text::LoadTokenizer(dir.path());
    ASSERT_TRUE(tok.ok()) << tok.status();
    const bool kimi = config->model_type == "kimi_k2";
    EXPECT_TRUE(std::filesystem::exists(dir.file(kimi ? "tiktoken.model" : "tokenizer.json")));
    EXPECT_EQ((*tok)->size(), config->vocab_size);
    const std::string text = "Hello, world! 你好，世界 🚀 x = 1234;\n\tdone";
    const std::vector<int32_t> ids = (*tok)->Encode(text);
    for (int32_t id : ids) EXPECT_LT(id, config->vocab_size);
    EXPECT_EQ((*tok)->Decode(ids, /*skip_special_tokens=*/true).value(), text);
    if (kimi) {
      EXPECT_EQ((*tok)->Encode(text).front(), (*tok)->Encode(text, false).front());  // no BOS
      EXPECT_EQ((*tok)->TokenId("[EOS]"), config->vocab_size - 256 + 1);
      EXPECT_EQ((*tok)->TokenId("<|im_middle|>"), config->vocab_size - 256 + 17);
    } else {
      EXPECT_EQ(ids.front(), 0);  // BOS
      EXPECT_EQ((*tok)->eos_id(), 1);
      EXPECT_EQ((*tok)->TokenId("</think>"), config->vocab_size - 1);
    }
  }
}

TEST(MakeModelTest, TokenizerNeedsRoomForTheBytes) {
  ScratchDir dir;
  auto config = PresetConfig("tiny-dsv3");
  config->vocab_size = 200;
  EXPECT_THAT(std::string(WriteTokenizer(*config, dir.path()).message()),
              ::testing::HasSubstr("vocab_size 200 is too small"));
  config->model_type = "kimi_k2";
  EXPECT_THAT(std::string(WriteTokenizer(*config, dir.path()).message()),
              ::testing::HasSubstr("too small for Kimi's layout"));
}

}  // namespace
}  // namespace moe
