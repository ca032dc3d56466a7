// A random weight tensor stored in each format of common/weight_matrix.h, its dequantized values
// computed element by element from the format's definition (not through any kernel's decoder),
// and its windows as Checkpoint::LoadMatrix gives them: what the CPU and CUDA compact-weight
// kernel tests multiply by.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "common/weight_matrix.h"

namespace moe {

struct Stored {
  std::vector<uint8_t> data;
  std::vector<float> block_scales;
  std::vector<uint16_t> group_scales;
  std::vector<double> dense;  // the stored tensor, dequantized [R, C]
  int64_t rows = 0, cols = 0;
};

// A random stored tensor [R, C] in format f (fp8 blocks 128x128; int4 groups of 32).
inline Stored MakeStored(WeightFormat f, int64_t R, int64_t C, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Stored s;
  s.rows = R;
  s.cols = C;
  s.dense.resize(static_cast<size_t>(R * C));
  switch (f) {
    case WeightFormat::kF32:
      s.data.resize(static_cast<size_t>(R * C) * 4);
      for (int64_t i = 0; i < R * C; ++i) {
        const float v = normal(rng);
        std::memcpy(&s.data[i * 4], &v, 4);
        s.dense[i] = v;
      }
      break;
    case WeightFormat::kBF16:
    case WeightFormat::kF16:
      s.data.resize(static_cast<size_t>(R * C) * 2);
      for (int64_t i = 0; i < R * C; ++i) {
        const float v = normal(rng);
        const uint16_t h = f == WeightFormat::kBF16 ? F32ToBF16(v) : F32ToF16(v);
        std::memcpy(&s.data[i * 2], &h, 2);
        s.dense[i] = f == WeightFormat::kBF16 ? BF16ToF32(h) : F16ToF32(h);
      }
      break;
    case WeightFormat::kF8Block: {
      const int64_t br = (R + 127) / 128, bc = (C + 127) / 128;
      s.block_scales.resize(static_cast<size_t>(br * bc));
      for (float& x : s.block_scales) x = std::exp2(static_cast<float>(rng() % 9) - 12.0f) * 1.5f;
      s.data.resize(static_cast<size_t>(R * C));
      for (int64_t r = 0; r < R; ++r) {
        for (int64_t c = 0; c < C; ++c) {
          uint8_t b = static_cast<uint8_t>(rng() & 0xff);
          if ((b & 0x7f) == 0x7f) b &= 0xfe;  // no NaN codes, as in checkpoints
          s.data[r * C + c] = b;
          s.dense[r * C + c] =
              static_cast<double>(F8E4M3ToF32(b)) * s.block_scales[(r / 128) * bc + c / 128];
        }
      }
      break;
    }
    case WeightFormat::kInt4Group: {
      const int64_t groups = C / 32;
      s.group_scales.resize(static_cast<size_t>(R * groups));
      for (uint16_t& x : s.group_scales) x = F32ToBF16(0.01f + 0.05f * std::abs(normal(rng)));
      std::vector<int32_t> words(static_cast<size_t>(R * C / 8));
      for (int32_t& w : words) w = static_cast<int32_t>(rng());
      s.data.resize(words.size() * 4);
      std::memcpy(s.data.data(), words.data(), s.data.size());
      for (int64_t r = 0; r < R; ++r) {
        for (int64_t c = 0; c < C; ++c) {
          const uint32_t word = static_cast<uint32_t>(words[(r * C + c) / 8]);
          const int q = static_cast<int>((word >> (4 * (c % 8))) & 0xf) - 8;
          s.dense[r * C + c] =
              q * static_cast<double>(BF16ToF32(s.group_scales[r * groups + c / 32]));
        }
      }
      break;
    }
  }
  return s;
}

// The window [r0, r0 + rows) x [c0, c0 + cols) of a stored tensor, as the checkpoint gives it.
inline WeightMatrix Window(WeightFormat f, const Stored& s, int64_t r0, int64_t rows, int64_t c0,
                           int64_t cols) {
  WeightMatrix w;
  w.format = f;
  w.rows = rows;
  w.cols = cols;
  w.row0 = r0;
  w.col0 = c0;
  switch (f) {
    case WeightFormat::kF32:
      w.row_stride = s.cols * 4;
      w.data = s.data.data() + r0 * w.row_stride + c0 * 4;
      break;
    case WeightFormat::kBF16:
    case WeightFormat::kF16:
      w.row_stride = s.cols * 2;
      w.data = s.data.data() + r0 * w.row_stride + c0 * 2;
      break;
    case WeightFormat::kF8Block:
      w.row_stride = s.cols;
      w.data = s.data.data() + r0 * w.row_stride + c0;
      w.block_scales = s.block_scales.data();
      w.scale_stride = (s.cols + 127) / 128;
      break;
    case WeightFormat::kInt4Group:
      w.row_stride = s.cols / 2;
      w.data = s.data.data() + r0 * w.row_stride + c0 / 2;
      w.scale_stride = s.cols / 32;
      w.group_scales = s.group_scales.data() + r0 * w.scale_stride + c0 / 32;
      break;
  }
  return w;
}

}  // namespace moe
