// Element types of checkpoint tensors and their conversions to float32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe {

// kI32 holds packed int4 weights (compressed-tensors `weight_packed`) and `weight_shape`.
enum class DType { kF32, kBF16, kF16, kF8E4M3, kI32 };

// Bytes per element.
size_t DTypeSize(DType t);
// The safetensors spelling: "F32", "BF16", "F16", "F8_E4M3", "I32".
absl::string_view DTypeName(DType t);
absl::StatusOr<DType> ParseDType(absl::string_view safetensors_name);

inline float BF16ToF32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t F32ToBF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float F16ToF32(uint16_t v);
uint16_t F32ToF16(float f);

// OCP float8 e4m3fn (torch.float8_e4m3fn): 1 sign, 4 exponent (bias 7), 3 mantissa bits,
// no infinities, 0x7f/0xff are NaN, largest finite 448.
float F8E4M3ToF32(uint8_t v);
// Round to nearest even, saturating to +-448 (what quantizers do before the cast).
uint8_t F32ToF8E4M3(float f);
inline constexpr float kF8E4M3Max = 448.0f;

// Converts `n` elements of type `t` at `src` into float32 (I32 as integers).
void ConvertToF32(DType t, const void* src, float* dst, size_t n);

}  // namespace moe
