#include "common/presets.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

namespace moe {
namespace {

using ::testing::HasSubstr;

// Every JSON file of common/presets/ is a preset, and each parses as a config.json.
TEST(PresetsTest, EveryPresetFileIsBuiltInAndParses) {
  std::vector<std::string> files;
  for (const auto& e :
       std::filesystem::directory_iterator(std::string(MOE_SOURCE_DIR) + "/common/presets")) {
    if (e.path().extension() == ".json") files.push_back(e.path().stem().string());
  }
  std::sort(files.begin(), files.end());
  std::vector<std::string> names = PresetNames();
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, files);
  for (const std::string& name : names) {
    auto c = PresetConfig(name);
    ASSERT_TRUE(c.ok()) << name << ": " << c.status();
    auto from_file =
        LoadModelConfig(std::string(MOE_SOURCE_DIR) + "/common/presets/" + name + ".json");
    ASSERT_TRUE(from_file.ok()) << from_file.status();
    EXPECT_EQ(from_file->ToJson(), c->ToJson()) << name;
  }
}

TEST(PresetsTest, TinyPresetsHaveTheirDistinguishingFields) {
  EXPECT_EQ(PresetConfig("tiny-dsv3")->num_nextn_predict_layers, 1);
  EXPECT_EQ(PresetConfig("tiny-kimi-k2")->model_type, "kimi_k2");
  EXPECT_EQ(PresetConfig("tiny-kimi-k2")->n_group, 1);
  EXPECT_FALSE(PresetConfig("tiny-v2lite")->q_lora_rank.has_value());
  EXPECT_FALSE(PresetConfig("tiny-v2lite")->rope_scaling.has_value());
  EXPECT_EQ(PresetConfig("deepseek-v3")->n_routed_experts, 256);
}

TEST(PresetsTest, UnknownPresetNamesTheKnownOnes) {
  auto c = PresetConfig("tiny-gpt");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("tiny-gpt"));
  EXPECT_THAT(c.status().message(), HasSubstr("tiny-dsv3"));
}

}  // namespace
}  // namespace moe
