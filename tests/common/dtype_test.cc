#include "common/dtype.h"

#include <cmath>

#include "gtest/gtest.h"

namespace moe {
namespace {

TEST(DTypeTest, F8E4M3DecodesKnownValues) {
  // Values from the OCP FP8 spec (E4M3): exponent bias 7, no infinities.
  EXPECT_EQ(F8E4M3ToF32(0x00), 0.0f);
  EXPECT_EQ(F8E4M3ToF32(0x38), 1.0f);  // 0 0111 000
  EXPECT_EQ(F8E4M3ToF32(0xb8), -1.0f);
  EXPECT_EQ(F8E4M3ToF32(0x7e), 448.0f);   // largest finite
  EXPECT_EQ(F8E4M3ToF32(0x01), 0x1p-9f);  // smallest subnormal
  EXPECT_EQ(F8E4M3ToF32(0x08), 0x1p-6f);  // smallest normal
  EXPECT_EQ(F8E4M3ToF32(0x3c), 1.5f);
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(0x7f)));
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(0xff)));
}

TEST(DTypeTest, F8E4M3RoundTripsEveryCode) {
  for (int v = 0; v < 256; ++v) {
    const float f = F8E4M3ToF32(static_cast<uint8_t>(v));
    if (std::isnan(f)) continue;
    const uint8_t back = F32ToF8E4M3(f);
    if (f == 0.0f) {
      EXPECT_EQ(F8E4M3ToF32(back), 0.0f);
    } else {
      EXPECT_EQ(back, v) << "code " << v << " value " << f;
    }
  }
}

TEST(DTypeTest, F8E4M3RoundsToNearestAndSaturates) {
  EXPECT_EQ(F8E4M3ToF32(F32ToF8E4M3(1.06f)), 1.0f);  // step 0.125 near 1
  EXPECT_EQ(F8E4M3ToF32(F32ToF8E4M3(1.07f)), 1.125f);
  EXPECT_EQ(F8E4M3ToF32(F32ToF8E4M3(1.0625f)), 1.0f);  // tie -> even mantissa
  EXPECT_EQ(F8E4M3ToF32(F32ToF8E4M3(1000.0f)), 448.0f);
  EXPECT_EQ(F8E4M3ToF32(F32ToF8E4M3(-1000.0f)), -448.0f);
}

TEST(DTypeTest, BF16RoundsToNearestEven) {
  EXPECT_EQ(BF16ToF32(F32ToBF16(1.0f)), 1.0f);
  EXPECT_EQ(BF16ToF32(F32ToBF16(1.0f + 0x1p-8f)), 1.0f);  // tie -> even
  EXPECT_EQ(BF16ToF32(F32ToBF16(1.0f + 3 * 0x1p-8f)), 1.0f + 0x1p-6f);
  EXPECT_EQ(F32ToBF16(-2.0f), 0xc000);
}

TEST(DTypeTest, F16KnownValues) {
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0xc000), -2.0f);
  EXPECT_EQ(F16ToF32(0x7bff), 65504.0f);
  EXPECT_EQ(F16ToF32(0x0001), 0x1p-24f);
  EXPECT_TRUE(std::isinf(F16ToF32(0x7c00)));
  for (uint32_t v = 0; v < 0x7c00; v += 7) {
    EXPECT_EQ(F32ToF16(F16ToF32(static_cast<uint16_t>(v))), v);
  }
}

TEST(DTypeTest, ParsesSafetensorsNames) {
  EXPECT_EQ(*ParseDType("F8_E4M3"), DType::kF8E4M3);
  EXPECT_EQ(*ParseDType("BF16"), DType::kBF16);
  EXPECT_FALSE(ParseDType("I64").ok());
}

}  // namespace
}  // namespace moe
