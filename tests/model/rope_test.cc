// YaRN RoPE against values printed by transformers 5.23 (DeepseekV3RotaryEmbedding.inv_freq and
// attention_scaling, DeepseekV3Attention.scaling) for the same configs.
#include "model/rope.h"

#include <cmath>

#include "gtest/gtest.h"
#include "tools/model_maker.h"

namespace moe {
namespace {

void ExpectNearRelative(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 1e-6 * std::fabs(want[i])) << "inv_freq[" << i << "]";
  }
}

TEST(RopeTest, TinyDsv3MatchesTransformers) {
  auto c = PresetConfig("tiny-dsv3");
  ASSERT_TRUE(c.ok());
  RotaryEmbedding r(*c);
  ExpectNearRelative(r.inv_freq(), {1.0, 0.223994657, 0.0416666642, 0.00395284733, 0.00124999997,
                                    0.000395284733, 0.000125000006, 3.95284733e-05});
  EXPECT_NEAR(r.attention_factor(), 1.0356570849393496, 1e-6);
  EXPECT_NEAR(r.softmax_scale(), 0.240484318716986, 1e-7);
}

TEST(RopeTest, TinyKimiK2MatchesTransformers) {
  auto c = PresetConfig("tiny-kimi-k2");
  ASSERT_TRUE(c.ok());
  RotaryEmbedding r(*c);
  ExpectNearRelative(r.inv_freq(), {1.0, 0.258600146, 0.0167185087, 0.00432340847, 0.00111803401,
                                    0.000289123738, 7.47674421e-05, 1.93348696e-05});
  EXPECT_NEAR(r.attention_factor(), 1.0, 1e-7);
  EXPECT_NEAR(r.softmax_scale(), 0.22918691831189503, 1e-7);
}

TEST(RopeTest, DeepSeekV3MatchesTransformers) {
  auto c = LoadModelConfig(std::string(MOE_SOURCE_DIR) + "/common/presets/deepseek-v3.json");
  ASSERT_TRUE(c.ok());
  RotaryEmbedding r(*c);
  ASSERT_EQ(r.inv_freq().size(), 32u);
  const std::vector<double> want = {1.0,
                                    0.749894202,
                                    0.562341332,
                                    0.421696514,
                                    0.316227764,
                                    0.237137362,
                                    0.177827939,
                                    0.133352146,
                                    0.100000001,
                                    0.0749894157,
                                    0.0562341288,
                                    0.0390069261,
                                    0.0268793609,
                                    0.0183781441,
                                    0.012447956,
                                    0.0083345091,
                                    0.00550000044,
                                    0.00356199732,
                                    0.00224936521,
                                    0.00137051346,
                                    0.000790569407,
                                    0.000414990413,
                                    0.00017782794,
                                    3.3338034e-05,
                                    2.49999994e-05,
                                    1.87473543e-05,
                                    1.40585325e-05,
                                    1.05424124e-05,
                                    7.90569447e-06,
                                    5.92843435e-06,
                                    4.44569832e-06,
                                    3.33380353e-06};
  ExpectNearRelative(r.inv_freq(), want);
  EXPECT_NEAR(r.attention_factor(), 1.0, 1e-7);
  EXPECT_NEAR(r.softmax_scale(), 0.1352337788608801, 1e-7);
}

TEST(RopeTest, WithoutScalingIsPlainRope) {
  auto c = PresetConfig("tiny-v2lite");
  ASSERT_TRUE(c.ok());
  RotaryEmbedding r(*c);
  for (size_t i = 0; i < r.inv_freq().size(); ++i) {
    EXPECT_NEAR(r.inv_freq()[i], std::pow(10000.0, -2.0 * i / 16), 1e-6 * r.inv_freq()[i]);
  }
  EXPECT_EQ(r.attention_factor(), 1.0f);
  EXPECT_NEAR(r.softmax_scale(), 1.0 / std::sqrt(40.0), 1e-7);
  std::vector<float> cos(8), sin(8);
  r.CosSin(3, cos.data(), sin.data());
  EXPECT_NEAR(cos[0], std::cos(3.0), 1e-6);
  EXPECT_NEAR(sin[1], std::sin(3.0 * std::pow(10000.0, -2.0 / 16)), 1e-6);
}

}  // namespace
}  // namespace moe
