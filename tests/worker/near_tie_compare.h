// Comparing a generation that rounds differently (a GPU's bf16 operands, products split over
// GPUs) with a reference generation of the same prompt:
//   - logits: ||got - want|| / ||want|| <= tolerance at every step where both ran the same tokens;
//   - greedy tokens: identical, except that at the first step where they differ the reference's
//     logits must show a near tie (its token within tolerance * max|logit| of the other pick);
//     after that the sequences differ and are not compared.
#pragma once

#include <cmath>
#include <string>

#include "gtest/gtest.h"
#include "worker/generator.h"

namespace moe::testing {

inline double RelativeL2Error(const float* got, const float* want, int64_t n) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    diff += (got[i] - want[i]) * static_cast<double>(got[i] - want[i]);
    norm += want[i] * static_cast<double>(want[i]);
  }
  return std::sqrt(diff / norm);
}

inline void ExpectSameUpToNearTies(const Generation& got, const Generation& want, int64_t vocab,
                                   double tolerance, const std::string& what) {
  ASSERT_EQ(got.logits.dim(0), want.logits.dim(0)) << what;
  for (int64_t i = 0; i < want.logits.dim(0); ++i) {
    EXPECT_LE(RelativeL2Error(got.logits.row(i), want.logits.row(i), vocab), tolerance)
        << what << ", step " << i;
    if (i >= static_cast<int64_t>(want.tokens.size())) break;
    const int32_t w = want.tokens[i], g = got.tokens[i];
    if (g == w) continue;
    const float* row = want.logits.row(i);
    float scale = 0;
    for (int64_t t = 0; t < vocab; ++t) scale = std::max(scale, std::fabs(row[t]));
    EXPECT_LE(row[w] - row[g], tolerance * scale)
        << what << ": step " << i << " picked " << g << " where the reference picked " << w
        << " by a clear margin";
    return;  // the sequences differ from here on
  }
}

}  // namespace moe::testing
