// How long one engine step may take before the coordinator calls its ranks wedged.
//
// A rank whose heartbeat thread lives while its step is stuck (blocked in a collective with a peer
// it can no longer reach, say) is invisible to heartbeats. So every step gets a deadline from the
// steps measured before it in the session: `factor` times the time the step is predicted to take,
// and never less than `min`. The prediction is deliberately an upper bound: the slowest recent
// step, scaled up by how many more tokens this step has than it (never down). A session's first
// `warmup_steps` steps are not measured (weights are still being paged in); until a step is, the
// deadline is `warmup`.
#pragma once

#include <cstdint>
#include <deque>

#include "absl/time/time.h"

namespace moe {

struct StepDeadlineOptions {
  absl::Duration min = absl::Seconds(5);
  double factor = 10;  // 0: steps have no deadline
  absl::Duration warmup = absl::Seconds(300);
  int warmup_steps = 3;
  int window = 256;      // recent steps the prediction looks at
};

class StepDeadline {
 public:
  explicit StepDeadline(StepDeadlineOptions options) : options_(options) {}

  // The deadline of a step of `tokens` tokens (absl::InfiniteDuration() when turned off).
  absl::Duration For(int64_t tokens) const;
  void Record(int64_t tokens, absl::Duration took);
  void Reset();  // a new session: its steps are measured afresh

 private:
  struct Measured {
    int64_t tokens;
    absl::Duration took;
  };
  const StepDeadlineOptions options_;
  std::deque<Measured> recent_;
  int64_t recorded_ = 0;
};

}  // namespace moe
