// Checkpoint::set_weights_at_load: weights converted at load (float32, or fp8 blocks for the
// projections) instead of used as stored.
#include <cmath>
#include <cstring>

#include "checkpoint/checkpoint.h"
#include "checkpoint/quantize.h"
#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cpu/weight_matmul.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace moe {
namespace {

using ::moe::testing::FloatBytes;
using ::moe::testing::SafetensorsBytes;
using ::moe::testing::ScratchDir;
using ::moe::testing::WriteFile;

constexpr int64_t kRows = 200, kCols = 300;

float Value(int64_t r, int64_t c) { return std::sin(0.37f * r + 0.11f * c) * (1.0f + r % 7); }

// w.weight: F32 [200, 300].
std::unique_ptr<Checkpoint> OpenF32(ScratchDir& dir) {
  std::vector<float> v;
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t c = 0; c < kCols; ++c) v.push_back(Value(r, c));
  }
  nlohmann::json h;
  h["w.weight"] = {{"dtype", "F32"}, {"shape", {kRows, kCols}}, {"data_offsets", {0, v.size() * 4}}};
  WriteFile(dir.file("model.safetensors"), SafetensorsBytes(h.dump(), FloatBytes(v)));
  auto ck = Checkpoint::Open(dir.path(), std::nullopt);
  EXPECT_TRUE(ck.ok()) << ck.status();
  return ck.ok() ? std::move(*ck) : nullptr;
}

std::vector<float> Dequantized(const WeightMatrix& w) {
  std::vector<float> out(static_cast<size_t>(w.rows * w.cols));
  cpu::DequantizeRows(w, 0, w.rows, out.data());
  return out;
}

TEST(WeightsAtLoadTest, Fp8QuantizesAProjectionsShardInBlocksOfItsOwn) {
  ScratchDir dir;
  auto ck = OpenF32(dir);
  ASSERT_NE(ck, nullptr);
  ck->set_weights_at_load(WeightsAtLoad::kFp8);
  // A column shard (row-parallel TP), quantized as a tensor of its own.
  auto w = ck->LoadMatrix("w.weight", {kRows, kCols}, SliceSpec::Cols(100, 300),
                          /*quantizable=*/true);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->format, WeightFormat::kF8Block);
  EXPECT_EQ(w->rows, kRows);
  EXPECT_EQ(w->cols, 200);
  // The reference: the shard in float32, through the quantizer, each element fp8 x its scale.
  std::vector<float> shard;
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t c = 100; c < kCols; ++c) shard.push_back(Value(r, c));
  }
  std::vector<uint8_t> q;
  std::vector<float> scales;
  QuantizeFp8(shard.data(), kRows, 200, 128, 128, &q, &scales);
  const std::vector<float> got = Dequantized(*w);
  double max_rel = 0;
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t c = 0; c < 200; ++c) {
      const float want = F8E4M3ToF32(q[r * 200 + c]) * scales[(r / 128) * 2 + c / 128];
      ASSERT_EQ(got[r * 200 + c], want) << r << "," << c;
      const float orig = shard[r * 200 + c];
      if (std::abs(orig) > 0.5f) max_rel = std::max<double>(max_rel, std::abs((want - orig) / orig));
    }
  }
  EXPECT_LT(max_rel, 0.07);  // e4m3 keeps 3 mantissa bits: half an ulp is 1/16
  EXPECT_EQ(ck->bytes_read(), w->bytes());
  EXPECT_EQ(w->bytes(), static_cast<size_t>(kRows * 200 + 2 * 2 * 4));
}

TEST(WeightsAtLoadTest, Fp8LeavesWeightsThatAreNotProjectionsAlone) {
  ScratchDir dir;
  auto ck = OpenF32(dir);
  ASSERT_NE(ck, nullptr);
  ck->set_weights_at_load(WeightsAtLoad::kFp8);
  auto w = ck->LoadMatrix("w.weight", {kRows, kCols}, SliceSpec::All(), /*quantizable=*/false);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->format, WeightFormat::kF32);
  EXPECT_EQ(Dequantized(*w)[7 * kCols + 9], Value(7, 9));
}

TEST(WeightsAtLoadTest, F32WidensAndAsStoredIsAViewOfTheFile) {
  ScratchDir dir;
  auto ck = OpenF32(dir);
  ASSERT_NE(ck, nullptr);
  auto view = ck->LoadMatrix("w.weight", {kRows, kCols}, SliceSpec::Rows(10, 20), true);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->row_stride, kCols * 4);
  float first;
  std::memcpy(&first, view->data, 4);
  EXPECT_EQ(first, Value(10, 0));
  ck->set_weights_at_load(WeightsAtLoad::kF32);
  auto wide = ck->LoadMatrix("w.weight", {kRows, kCols}, SliceSpec::Rows(10, 20), true);
  ASSERT_TRUE(wide.ok()) << wide.status();
  EXPECT_EQ(wide->format, WeightFormat::kF32);
  EXPECT_NE(wide->data, view->data);  // owned
  EXPECT_EQ(Dequantized(*wide), Dequantized(*view));
}

TEST(WeightsAtLoadTest, ParsesTheFlagsValues) {
  EXPECT_EQ(*ParseWeightsAtLoad("stored"), WeightsAtLoad::kAsStored);
  EXPECT_EQ(*ParseWeightsAtLoad("f32"), WeightsAtLoad::kF32);
  EXPECT_EQ(*ParseWeightsAtLoad("fp8"), WeightsAtLoad::kFp8);
  EXPECT_FALSE(ParseWeightsAtLoad("int8").ok());
  EXPECT_EQ(*ParseActivations("f32"), Activations::kF32);
  EXPECT_EQ(*ParseActivations("bf16"), Activations::kBf16);
  EXPECT_EQ(*ParseActivations("int8"), Activations::kInt8);
  auto bad = ParseActivations("fp16");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("fp16"), std::string::npos) << bad.status();
}

// --activations bf16 and int8 mark fp8 (here converted at load) matrices for bf16 products;
// float32 matrices and the default f32 stay unrounded.
TEST(WeightsAtLoadTest, ActivationsMarkTheFloatProjections) {
  ScratchDir dir;
  auto ck = OpenF32(dir);
  ASSERT_NE(ck, nullptr);
  auto load = [&](bool projection) {
    auto w = ck->LoadMatrix("w.weight", {kRows, kCols}, SliceSpec::All(), projection);
    EXPECT_TRUE(w.ok()) << w.status();
    return w.ok() ? w->x_rounding : Activations::kF32;
  };
  ck->set_activations(Activations::kBf16);
  EXPECT_EQ(load(true), Activations::kF32);  // float32 weights
  ck->set_weights_at_load(WeightsAtLoad::kFp8);
  EXPECT_EQ(load(true), Activations::kBf16);
  EXPECT_EQ(load(false), Activations::kF32);
  ck->set_activations(Activations::kInt8);
  EXPECT_EQ(load(true), Activations::kBf16);
  ck->set_activations(Activations::kF32);
  EXPECT_EQ(load(true), Activations::kF32);
}

}  // namespace
}  // namespace moe
