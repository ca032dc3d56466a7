#include "model/mlp.h"

#include "common/status_macros.h"
#include "kernels/cpu/ops.h"

namespace moe {

absl::StatusOr<GatedMlp> GatedMlp::Load(Checkpoint& ck, const std::string& prefix, int64_t hidden,
                                        int64_t inter, Range part) {
  GatedMlp m;
  MOE_ASSIGN_OR_RETURN(
      Linear gate, Linear::Load(ck, prefix + "gate_proj.weight", inter, hidden, part, {0, hidden}));
  MOE_ASSIGN_OR_RETURN(
      Linear up, Linear::Load(ck, prefix + "up_proj.weight", inter, hidden, part, {0, hidden}));
  m.gate_up_ = Linear::Concat({std::move(gate), std::move(up)});
  MOE_ASSIGN_OR_RETURN(
      m.down_, Linear::Load(ck, prefix + "down_proj.weight", hidden, inter, {0, hidden}, part));
  return m;
}

void GatedMlp::Forward(const float* x, int64_t n, float* y) const {
  const int64_t inter = intermediate();
  FloatVector gate_up(static_cast<size_t>(n * 2 * inter)), act(static_cast<size_t>(n * inter));
  gate_up_.Forward(x, n, gate_up.data());
  cpu::SiluAndMul(gate_up.data(), n, inter, act.data());
  down_.Forward(act.data(), n, y);
}

}  // namespace moe
