#include "checkpoint/quantize.h"

#include <algorithm>
#include <cmath>

#include "common/dtype.h"

namespace moe {

void QuantizeFp8(const float* w, int64_t rows, int64_t cols, int64_t br, int64_t bc,
                 std::vector<uint8_t>* q, std::vector<float>* scale_inv) {
  const int64_t nbr = (rows + br - 1) / br, nbc = (cols + bc - 1) / bc;
  q->assign(static_cast<size_t>(rows * cols), 0);
  scale_inv->assign(static_cast<size_t>(nbr * nbc), 1.0f);
#pragma omp parallel for schedule(dynamic) if (rows * cols > (1 << 16))
  for (int64_t bi = 0; bi < nbr; ++bi) {
    for (int64_t bj = 0; bj < nbc; ++bj) {
      float amax = 0.0f;
      for (int64_t r = bi * br; r < std::min(rows, (bi + 1) * br); ++r) {
        for (int64_t c = bj * bc; c < std::min(cols, (bj + 1) * bc); ++c) {
          amax = std::max(amax, std::fabs(w[r * cols + c]));
        }
      }
      const float s = amax > 0 ? amax / kF8E4M3Max : 1.0f;
      (*scale_inv)[bi * nbc + bj] = s;
      for (int64_t r = bi * br; r < std::min(rows, (bi + 1) * br); ++r) {
        for (int64_t c = bj * bc; c < std::min(cols, (bj + 1) * bc); ++c) {
          (*q)[r * cols + c] = F32ToF8E4M3(w[r * cols + c] / s);
        }
      }
    }
  }
}

void QuantizeInt4(const float* w, int64_t rows, int64_t cols, int64_t group,
                  std::vector<int32_t>* packed, std::vector<uint16_t>* scales) {
  packed->assign(static_cast<size_t>(rows * cols / 8), 0);
  scales->assign(static_cast<size_t>(rows * (cols / group)), 0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < cols / group; ++g) {
      const float* x = w + r * cols + g * group;
      float amax = 0.0f;
      for (int64_t i = 0; i < group; ++i) amax = std::max(amax, std::fabs(x[i]));
      const uint16_t s16 = F32ToBF16(amax > 0 ? amax / 7.5f : 1.0f);
      (*scales)[r * (cols / group) + g] = s16;
      const float s = BF16ToF32(s16);
      for (int64_t i = 0; i < group; ++i) {
        const int q = static_cast<int>(std::clamp(std::nearbyint(x[i] / s), -8.0f, 7.0f));
        const int64_t c = g * group + i;
        auto& word = (*packed)[(r * cols + c) / 8];
        word = static_cast<int32_t>(static_cast<uint32_t>(word) |
                                    (static_cast<uint32_t>(q + 8) << (4 * (c % 8))));
      }
    }
  }
}

}  // namespace moe
