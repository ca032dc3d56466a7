#include "checkpoint/checkpoint.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace moe {
namespace {

using ::moe::testing::FloatBytes;
using ::moe::testing::SafetensorsBytes;
using ::moe::testing::ScratchDir;
using ::moe::testing::WriteFile;
using ::testing::HasSubstr;

// A 300x200 F8_E4M3 weight with 128x128 blocks: scales [3, 2], partial blocks on both edges.
// Codes alternate 1.0 (0x38) and -2.0 (0xc0); block (i, j) has scale 1 + i * 2 + j.
constexpr int64_t kRows = 300, kCols = 200;

float ExpectedFp8(int64_t r, int64_t c) {
  const float code = (r + c) % 2 == 0 ? 1.0f : -2.0f;
  return code * static_cast<float>(1 + (r / 128) * 2 + (c / 128));
}

std::string Fp8File(std::vector<int64_t> scale_shape = {3, 2}) {
  std::string w(kRows * kCols, '\0');
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t c = 0; c < kCols; ++c)
      w[r * kCols + c] = static_cast<char>((r + c) % 2 == 0 ? 0x38 : 0xc0);
  }
  std::vector<float> s;
  for (int64_t i = 0; i < scale_shape[0] * scale_shape[1]; ++i) s.push_back(1.0f + i);
  nlohmann::json h;
  h["w.weight"] = {
      {"dtype", "F8_E4M3"}, {"shape", {kRows, kCols}}, {"data_offsets", {0, w.size()}}};
  h["w.weight_scale_inv"] = {{"dtype", "F32"},
                             {"shape", scale_shape},
                             {"data_offsets", {w.size(), w.size() + s.size() * 4}}};
  return SafetensorsBytes(h.dump(), w + FloatBytes(s));
}

std::unique_ptr<Checkpoint> OpenOrDie(const std::string& dir, bool quantized = true) {
  auto ck = Checkpoint::Open(dir, quantized ? std::optional(QuantizationConfig{}) : std::nullopt);
  EXPECT_TRUE(ck.ok()) << ck.status();
  return ck.ok() ? std::move(*ck) : nullptr;
}

TEST(CheckpointTest, DequantizesFp8WithPartialEdgeBlocks) {
  ScratchDir dir;
  WriteFile(dir.file("model.safetensors"), Fp8File());
  auto ck = OpenOrDie(dir.path());
  auto w = ck->Load("w.weight", {kRows, kCols});
  ASSERT_TRUE(w.ok()) << w.status();
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t c = 0; c < kCols; ++c)
      ASSERT_EQ(w->data()[r * kCols + c], ExpectedFp8(r, c)) << r << "," << c;
  }
  EXPECT_EQ(ck->bytes_read(), static_cast<uint64_t>(kRows * kCols + 6 * 4));
}

TEST(CheckpointTest, LoadsRowAndColumnSlicesAcrossBlocks) {
  ScratchDir dir;
  WriteFile(dir.file("model.safetensors"), Fp8File());
  auto ck = OpenOrDie(dir.path());
  auto rows = ck->Load("w.weight", {kRows, kCols}, SliceSpec::Rows(100, 260));
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->shape(), (std::vector<int64_t>{160, kCols}));
  for (int64_t r = 0; r < 160; ++r) {
    for (int64_t c = 0; c < kCols; ++c)
      ASSERT_EQ(rows->data()[r * kCols + c], ExpectedFp8(r + 100, c));
  }
  // Rows 100..259 touch scale rows 0..2, both scale columns.
  EXPECT_EQ(ck->bytes_read(), static_cast<uint64_t>(160 * kCols + 3 * 2 * 4));

  auto cols = ck->Load("w.weight", {kRows, kCols}, SliceSpec::Cols(120, 140));
  ASSERT_TRUE(cols.ok()) << cols.status();
  EXPECT_EQ(cols->shape(), (std::vector<int64_t>{kRows, 20}));
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t c = 0; c < 20; ++c) ASSERT_EQ(cols->data()[r * 20 + c], ExpectedFp8(r, c + 120));
  }
}

TEST(CheckpointTest, ScaleTensorOfWrongShape) {
  ScratchDir dir;
  WriteFile(dir.file("model.safetensors"), Fp8File({2, 2}));
  auto ck = OpenOrDie(dir.path());
  auto w = ck->Load("w.weight", {kRows, kCols});
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("w.weight_scale_inv"));
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("[3, 2]"));
}

TEST(CheckpointTest, Fp8WithoutQuantizationConfig) {
  ScratchDir dir;
  WriteFile(dir.file("model.safetensors"), Fp8File());
  auto ck = OpenOrDie(dir.path(), /*quantized=*/false);
  auto w = ck->Load("w.weight", {kRows, kCols});
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("quantization_config"));
}

TEST(CheckpointTest, Fp8WithoutScales) {
  ScratchDir dir;
  nlohmann::json h;
  h["w.weight"] = {{"dtype", "F8_E4M3"}, {"shape", {2, 2}}, {"data_offsets", {0, 4}}};
  WriteFile(dir.file("model.safetensors"), SafetensorsBytes(h.dump(), std::string(4, '\x38')));
  auto ck = OpenOrDie(dir.path());
  auto w = ck->Load("w.weight", {2, 2});
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("without its block scales"));
}

TEST(CheckpointTest, ShapeDisagreeingWithConfig) {
  ScratchDir dir;
  WriteFile(dir.file("model.safetensors"), Fp8File());
  auto ck = OpenOrDie(dir.path());
  auto w = ck->Load("w.weight", {kRows, kCols + 1});
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("\"w.weight\""));
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("model.safetensors"));
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("[300, 201]"));
}

TEST(CheckpointTest, MissingTensor) {
  ScratchDir dir;
  WriteFile(dir.file("model.safetensors"), Fp8File());
  auto ck = OpenOrDie(dir.path());
  auto w = ck->Load("model.norm.weight", {4});
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("model.norm.weight"));
}

TEST(CheckpointTest, SliceOutOfRange) {
  ScratchDir dir;
  WriteFile(dir.file("model.safetensors"), Fp8File());
  auto ck = OpenOrDie(dir.path());
  EXPECT_FALSE(ck->Load("w.weight", {kRows, kCols}, SliceSpec::Rows(290, 310)).ok());
  EXPECT_FALSE(ck->Load("w.weight", {kRows, kCols}, SliceSpec::Cols(5, 4)).ok());
}

TEST(CheckpointTest, ConvertsBf16AndF16) {
  ScratchDir dir;
  nlohmann::json h;
  h["b"] = {{"dtype", "BF16"}, {"shape", {2}}, {"data_offsets", {0, 4}}};
  h["h"] = {{"dtype", "F16"}, {"shape", {2}}, {"data_offsets", {4, 8}}};
  // bf16 1.0 = 0x3f80, -2.0 = 0xc000; f16 1.0 = 0x3c00, 0.5 = 0x3800 (little-endian).
  const std::string data("\x80\x3f\x00\xc0\x00\x3c\x00\x38", 8);
  WriteFile(dir.file("model.safetensors"), SafetensorsBytes(h.dump(), data));
  auto ck = OpenOrDie(dir.path());
  auto b = ck->Load("b", {2});
  auto f = ck->Load("h", {2});
  ASSERT_TRUE(b.ok() && f.ok());
  EXPECT_EQ((*b)[0], 1.0f);
  EXPECT_EQ((*b)[1], -2.0f);
  EXPECT_EQ((*f)[0], 1.0f);
  EXPECT_EQ((*f)[1], 0.5f);
}

std::string OneFloatFile(const std::string& name, float v) {
  nlohmann::json h;
  h[name] = {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, 4}}};
  return SafetensorsBytes(h.dump(), FloatBytes({v}));
}

TEST(CheckpointTest, ShardedIndex) {
  ScratchDir dir;
  WriteFile(dir.file("model-00001-of-00002.safetensors"), OneFloatFile("x", 1.0f));
  WriteFile(dir.file("model-00002-of-00002.safetensors"), OneFloatFile("y", 2.0f));
  WriteFile(dir.file("model.safetensors.index.json"),
            R"({"metadata":{"total_size":8},"weight_map":{"x":"model-00001-of-00002.safetensors",)"
            R"("y":"model-00002-of-00002.safetensors"}})");
  auto ck = OpenOrDie(dir.path());
  EXPECT_EQ((*ck->Load("y", {1}))[0], 2.0f);
  EXPECT_EQ((*ck->Load("x", {1}))[0], 1.0f);
  EXPECT_EQ(ck->total_bytes(), 8u);
}

TEST(CheckpointTest, IndexPointingAtWrongShard) {
  ScratchDir dir;
  WriteFile(dir.file("a.safetensors"), OneFloatFile("x", 1.0f));
  WriteFile(dir.file("b.safetensors"), OneFloatFile("y", 2.0f));
  WriteFile(dir.file("model.safetensors.index.json"),
            R"({"weight_map":{"x":"b.safetensors","y":"b.safetensors"}})");
  auto ck = Checkpoint::Open(dir.path(), std::nullopt);
  ASSERT_FALSE(ck.ok());
  EXPECT_THAT(std::string(ck.status().message()), HasSubstr("\"x\""));
}

TEST(CheckpointTest, IndexNamingAMissingShard) {
  ScratchDir dir;
  WriteFile(dir.file("model.safetensors.index.json"), R"({"weight_map":{"x":"gone.safetensors"}})");
  auto ck = Checkpoint::Open(dir.path(), std::nullopt);
  ASSERT_FALSE(ck.ok());
  EXPECT_THAT(std::string(ck.status().message()), HasSubstr("gone.safetensors"));
}

TEST(CheckpointTest, IndexEscapingTheFolder) {
  ScratchDir dir;
  WriteFile(dir.file("model.safetensors.index.json"), R"({"weight_map":{"x":"../etc/passwd"}})");
  EXPECT_FALSE(Checkpoint::Open(dir.path(), std::nullopt).ok());
}

TEST(CheckpointTest, TensorStoredTwice) {
  ScratchDir dir;
  WriteFile(dir.file("a.safetensors"), OneFloatFile("x", 1.0f));
  WriteFile(dir.file("b.safetensors"), OneFloatFile("x", 2.0f));
  auto ck = Checkpoint::Open(dir.path(), std::nullopt);
  ASSERT_FALSE(ck.ok());
  EXPECT_THAT(std::string(ck.status().message()), HasSubstr("stored twice"));
}

TEST(CheckpointTest, EmptyFolder) {
  ScratchDir dir;
  EXPECT_EQ(Checkpoint::Open(dir.path(), std::nullopt).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace moe
