// Compressed-tensors pack-quantized int4 modules: reading them (as float32 and as a WeightMatrix
// view) and refusing malformed ones with errors that name the tensor.
#include <cstring>

#include "checkpoint/checkpoint.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace moe {
namespace {

using ::moe::testing::SafetensorsBytes;
using ::moe::testing::ScratchDir;
using ::moe::testing::WriteFile;
using ::testing::HasSubstr;

// w: a [4, 64] int4 weight in groups of 32. Element (r, c) has q = (r + c) % 16 - 8 and scale
// 0.5 * (1 + group index + 2r) (exact in bf16).
constexpr int64_t kRows = 4, kCols = 64, kGroup = 32;

float Expected(int64_t r, int64_t c) {
  return static_cast<float>((r + c) % 16 - 8) * 0.5f * static_cast<float>(1 + c / kGroup + 2 * r);
}

uint16_t Bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>(bits >> 16);  // exact for the values used here
}

struct Parts {
  std::vector<int64_t> packed_shape = {kRows, kCols / 8};
  std::vector<int64_t> scale_shape = {kRows, kCols / kGroup};
  std::string scale_dtype = "BF16";
  std::vector<int32_t> weight_shape = {kRows, kCols};
  bool with_shape = true;
  bool with_scale = true;
};

std::string Int4File(const Parts& p = {}) {
  std::vector<uint32_t> words(static_cast<size_t>(p.packed_shape[0] * p.packed_shape[1]), 0);
  for (int64_t r = 0; r < p.packed_shape[0]; ++r) {
    for (int64_t c = 0; c < p.packed_shape[1] * 8; ++c) {
      const uint32_t stored = static_cast<uint32_t>((r + c) % 16);  // q + 8
      words[(r * p.packed_shape[1] * 8 + c) / 8] |= stored << (4 * (c % 8));
    }
  }
  std::vector<uint16_t> scales;
  for (int64_t r = 0; r < p.scale_shape[0]; ++r) {
    for (int64_t g = 0; g < p.scale_shape[1]; ++g) {
      scales.push_back(Bf16(0.5f * static_cast<float>(1 + g + 2 * r)));
    }
  }
  std::string data(reinterpret_cast<const char*>(words.data()), words.size() * 4);
  nlohmann::json h;
  h["w.weight_packed"] = {
      {"dtype", "I32"}, {"shape", p.packed_shape}, {"data_offsets", {0, data.size()}}};
  if (p.with_scale) {
    const size_t begin = data.size();
    data.append(reinterpret_cast<const char*>(scales.data()), scales.size() * 2);
    h["w.weight_scale"] = {
        {"dtype", p.scale_dtype}, {"shape", p.scale_shape}, {"data_offsets", {begin, data.size()}}};
  }
  if (p.with_shape) {
    const size_t begin = data.size();
    data.append(reinterpret_cast<const char*>(p.weight_shape.data()), 8);
    h["w.weight_shape"] = {{"dtype", "I32"}, {"shape", {2}}, {"data_offsets", {begin, data.size()}}};
  }
  return SafetensorsBytes(h.dump(), data);
}

QuantizationConfig Int4Config(std::vector<std::string> ignore = {}) {
  QuantizationConfig q;
  q.quant_method = "compressed-tensors";
  q.group_size = kGroup;
  q.ignore = std::move(ignore);
  return q;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> OpenWith(const std::string& file_bytes,
                                                     std::optional<QuantizationConfig> q,
                                                     ScratchDir& dir) {
  WriteFile(dir.file("model.safetensors"), file_bytes);
  return Checkpoint::Open(dir.path(), q);
}

TEST(Int4CheckpointTest, LoadsAsFloat32WholeAndInColumnGroups) {
  ScratchDir dir;
  auto ck = OpenWith(Int4File(), Int4Config(), dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_TRUE((*ck)->HasWeight("w.weight"));
  auto w = (*ck)->Load("w.weight", {kRows, kCols});
  ASSERT_TRUE(w.ok()) << w.status();
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t c = 0; c < kCols; ++c) ASSERT_EQ(w->data()[r * kCols + c], Expected(r, c));
  }
  auto right = (*ck)->Load("w.weight", {kRows, kCols}, SliceSpec::Cols(32, 64));
  ASSERT_TRUE(right.ok()) << right.status();
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t c = 0; c < 32; ++c) ASSERT_EQ(right->data()[r * 32 + c], Expected(r, 32 + c));
  }
}

TEST(Int4CheckpointTest, MatrixIsAViewWithItsGroupScales) {
  ScratchDir dir;
  auto ck = OpenWith(Int4File(), Int4Config(), dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  auto m = (*ck)->LoadMatrix("w.weight", {kRows, kCols}, SliceSpec::Rows(1, 3));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->format, WeightFormat::kInt4Group);
  EXPECT_EQ(m->rows, 2);
  EXPECT_EQ(m->cols, kCols);
  EXPECT_EQ(m->group_size, kGroup);
  EXPECT_EQ(m->row_stride, kCols / 2);
  // Row 1's first word: columns 0..7 store (1 + c) % 16.
  uint32_t word;
  std::memcpy(&word, m->data, 4);
  EXPECT_EQ(word & 0xf, 1u);
  EXPECT_EQ((word >> 28) & 0xf, 8u);
  EXPECT_EQ(m->group_scales[0], Bf16(0.5f * 3));  // row 1, group 0
  EXPECT_EQ(m->bytes(), static_cast<size_t>(2 * kCols / 2 + 2 * 2 * 2));
  EXPECT_EQ((*ck)->bytes_read(), m->bytes());
}

// --activations int8 marks the int4 matrices (and only with it set; bf16 leaves them): their
// few-row products round x (kernels/cpu/int4_int8_product.h).
TEST(Int4CheckpointTest, ActivationsInt8MarksTheMatrices) {
  ScratchDir dir;
  auto ck = OpenWith(Int4File(), Int4Config(), dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  auto exact = (*ck)->LoadMatrix("w.weight", {kRows, kCols});
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_EQ(exact->x_rounding, Activations::kF32);
  (*ck)->set_activations(Activations::kBf16);
  auto bf16 = (*ck)->LoadMatrix("w.weight", {kRows, kCols}, {}, /*quantizable=*/true);
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_EQ(bf16->x_rounding, Activations::kF32);
  (*ck)->set_activations(Activations::kInt8);
  auto rounded = (*ck)->LoadMatrix("w.weight", {kRows, kCols}, SliceSpec::Cols(32, 64));
  ASSERT_TRUE(rounded.ok()) << rounded.status();
  EXPECT_EQ(rounded->x_rounding, Activations::kInt8);
}

void ExpectError(const std::string& file_bytes, std::optional<QuantizationConfig> q,
                 const std::string& needle, SliceSpec slice = SliceSpec::All()) {
  ScratchDir dir;
  auto ck = OpenWith(file_bytes, q, dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  auto m = (*ck)->LoadMatrix("w.weight", {kRows, kCols}, slice);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr(needle));
  auto t = (*ck)->Load("w.weight", {kRows, kCols}, slice);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr(needle));
}

TEST(Int4CheckpointTest, TruncatedPackedTensor) {
  Parts p;
  p.packed_shape = {kRows, kCols / 8 - 1};
  ExpectError(Int4File(p), Int4Config(), "w.weight_packed\": must be I32 [4, 8]");
}

TEST(Int4CheckpointTest, ScaleOfWrongShapeOrDtype) {
  Parts p;
  p.scale_shape = {kRows, 1};
  ExpectError(Int4File(p), Int4Config(), "w.weight_scale\": group scales must be BF16 [4, 2]");
  Parts f;
  f.scale_dtype = "F16";
  ExpectError(Int4File(f), Int4Config(), "got F16");
}

TEST(Int4CheckpointTest, GroupSizeThatDoesNotDivideTheRow) {
  QuantizationConfig q = Int4Config();
  q.group_size = 96;
  ExpectError(Int4File(), q, "group size 96 does not divide the row of 64 columns");
}

TEST(Int4CheckpointTest, MissingWeightShapeOrScale) {
  Parts p;
  p.with_shape = false;
  ExpectError(Int4File(p), Int4Config(), "int4 weight without \"w.weight_shape\"");
  Parts s;
  s.with_scale = false;
  ExpectError(Int4File(s), Int4Config(), "int4 weight without \"w.weight_scale\"");
}

TEST(Int4CheckpointTest, WeightShapeDisagreeingWithConfig) {
  Parts p;
  p.weight_shape = {kRows, 128};
  ExpectError(Int4File(p), Int4Config(), "w.weight_shape\": shape [4, 128] disagrees");
}

TEST(Int4CheckpointTest, Int4WithoutACompressedTensorsConfig) {
  ExpectError(Int4File(), std::nullopt, "compressed-tensors pack-quantized");
  ExpectError(Int4File(), QuantizationConfig{}, "compressed-tensors pack-quantized");  // fp8's
}

TEST(Int4CheckpointTest, ModuleTheIgnoreListNamesMustNotBeInt4) {
  ExpectError(Int4File(), Int4Config({"re:w"}), "is in quantization_config.ignore");
  ExpectError(Int4File(), Int4Config({"w"}), "is in quantization_config.ignore");
}

TEST(Int4CheckpointTest, ColumnShardNotMadeOfWholeGroups) {
  ExpectError(Int4File(), Int4Config(), "is not made of whole 32-column groups",
              SliceSpec::Cols(16, 64));
}

TEST(Int4CheckpointTest, IgnoreMatchesFromTheStartLikeCompressedTensors) {
  const QuantizationConfig q =
      Int4Config({"lm_head", "re:.*self_attn.*", "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"});
  EXPECT_TRUE(q.Ignores("lm_head"));
  EXPECT_FALSE(q.Ignores("model.lm_head"));  // a plain entry is the whole name
  EXPECT_TRUE(q.Ignores("model.layers.3.self_attn.o_proj"));
  EXPECT_TRUE(q.Ignores("model.layers.0.mlp.down_proj"));
  EXPECT_FALSE(q.Ignores("model.layers.3.mlp.experts.7.down_proj"));
  EXPECT_FALSE(q.Ignores("model.layers.3.mlp.shared_experts.down_proj"));
}

}  // namespace
}  // namespace moe
