#include "common/dtype.h"

#include <array>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace moe {

size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kBF16:
    case DType::kF16:
      return 2;
    case DType::kF8E4M3:
      return 1;
  }
  return 0;
}

absl::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kF8E4M3:
      return "F8_E4M3";
    case DType::kI32:
      return "I32";
  }
  return "?";
}

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  if (name == "F32") return DType::kF32;
  if (name == "BF16") return DType::kBF16;
  if (name == "F16") return DType::kF16;
  if (name == "F8_E4M3") return DType::kF8E4M3;
  if (name == "I32") return DType::kI32;
  return absl::InvalidArgumentError(absl::StrCat(
      "unsupported dtype \"", name, "\" (expected F32, BF16, F16, F8_E4M3 or I32)"));
}

float F16ToF32(uint16_t v) {
  const uint32_t sign = (v >> 15) & 1u, exp = (v >> 10) & 0x1fu, mant = v & 0x3ffu;
  float mag;
  if (exp == 0) {
    mag = std::ldexp(static_cast<float>(mant), -24);
  } else if (exp == 31) {
    mag = mant ? NAN : INFINITY;
  } else {
    mag = std::ldexp(static_cast<float>(mant | 0x400u), static_cast<int>(exp) - 25);
  }
  return sign ? -mag : mag;
}

uint16_t F32ToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7e00u;
  if (a >= 65520.0f) return sign | 0x7c00u;  // rounds to infinity
  if (a < std::ldexp(1.0f, -14)) {           // subnormal: multiples of 2^-24
    return sign | static_cast<uint16_t>(std::nearbyint(std::ldexp(a, 24)));
  }
  int e;
  const float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  uint32_t mant = static_cast<uint32_t>(std::nearbyint(std::ldexp(m, 11)));  // 11 bits incl. lead
  if (mant == 2048u) {
    mant = 1024u;
    ++e;
  }
  const uint32_t exp = static_cast<uint32_t>(e - 1 + 15);
  return sign | static_cast<uint16_t>((exp << 10) | (mant & 0x3ffu));
}

float F8E4M3ToF32(uint8_t v) {
  const uint32_t sign = v >> 7, exp = (v >> 3) & 0xfu, mant = v & 0x7u;
  float mag;
  if (exp == 0xf && mant == 0x7) {
    mag = NAN;
  } else if (exp == 0) {
    mag = std::ldexp(static_cast<float>(mant), -9);
  } else {
    mag = std::ldexp(static_cast<float>(mant | 0x8u), static_cast<int>(exp) - 10);
  }
  return sign ? -mag : mag;
}

uint8_t F32ToF8E4M3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  float a = std::fabs(f);
  if (a >= kF8E4M3Max) return sign | 0x7e;  // saturate to 448
  if (a < std::ldexp(1.0f, -6)) {           // subnormal: multiples of 2^-9
    return sign | static_cast<uint8_t>(std::nearbyint(std::ldexp(a, 9)));
  }
  int e;
  const float m = std::frexp(a, &e);
  uint32_t mant = static_cast<uint32_t>(std::nearbyint(std::ldexp(m, 4)));  // 4 bits incl. lead
  if (mant == 16u) {
    mant = 8u;
    ++e;
  }
  const uint32_t exp = static_cast<uint32_t>(e - 1 + 7);
  if (exp > 15 || (exp == 15 && (mant & 7u) == 7u)) return sign | 0x7e;
  return sign | static_cast<uint8_t>((exp << 3) | (mant & 0x7u));
}

void ConvertToF32(DType t, const void* src, float* dst, size_t n) {
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::kBF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = BF16ToF32(s[i]);
      return;
    }
    case DType::kF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = F16ToF32(s[i]);
      return;
    }
    case DType::kF8E4M3: {
      static const std::array<float, 256> table = [] {
        std::array<float, 256> t;
        for (int v = 0; v < 256; ++v) t[v] = F8E4M3ToF32(static_cast<uint8_t>(v));
        return t;
      }();
      const auto* s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = table[s[i]];
      return;
    }
    case DType::kI32: {
      for (size_t i = 0; i < n; ++i) {
        int32_t v;
        std::memcpy(&v, static_cast<const uint8_t*>(src) + 4 * i, 4);
        dst[i] = static_cast<float>(v);
      }
      return;
    }
  }
}

}  // namespace moe
