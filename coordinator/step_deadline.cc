#include "coordinator/step_deadline.h"

#include <algorithm>

namespace moe {

absl::Duration StepDeadline::For(int64_t tokens) const {
  if (options_.factor <= 0) return absl::InfiniteDuration();
  if (recent_.empty()) return std::max(options_.min, options_.warmup);
  absl::Duration predicted;
  for (const Measured& m : recent_) {
    const double scale =
        std::max(1.0, static_cast<double>(tokens) / static_cast<double>(std::max<int64_t>(1, m.tokens)));
    predicted = std::max(predicted, m.took * scale);
  }
  return std::max(options_.min, predicted * options_.factor);
}

void StepDeadline::Record(int64_t tokens, absl::Duration took) {
  if (++recorded_ <= options_.warmup_steps) return;  // paging weights in is not a step's cost
  recent_.push_back({tokens, took});
  while (static_cast<int>(recent_.size()) > options_.window) recent_.pop_front();
}

void StepDeadline::Reset() {
  recent_.clear();
  recorded_ = 0;
}

}  // namespace moe
