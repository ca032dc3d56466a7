#include "model/mlp.h"

#include "common/status_macros.h"
#include "kernels/cpu/ops.h"

namespace moe {

absl::StatusOr<GatedMlp> GatedMlp::Load(Checkpoint& ck, const MlpWeights& w, Range part,
                                        Activation act) {
  GatedMlp m;
  m.act_ = act;
  const int64_t hidden = w.gate_proj.shape.at(1);
  MOE_ASSIGN_OR_RETURN(m.gate_, Linear::Load(ck, w.gate_proj, part, {0, hidden}));
  MOE_ASSIGN_OR_RETURN(m.up_, Linear::Load(ck, w.up_proj, part, {0, hidden}));
  MOE_ASSIGN_OR_RETURN(m.down_, Linear::Load(ck, w.down_proj, {0, hidden}, part));
  return m;
}

void GatedMlp::Forward(const float* x, int64_t n, float* y) const {
  const int64_t inter = intermediate();
  FloatVector gate_up(static_cast<size_t>(n * 2 * inter)), act(static_cast<size_t>(n * inter));
  // gate and up side by side in each row, as SiluAndMul reads them.
  gate_.Forward(x, n, gate_up.data(), 2 * inter);
  up_.Forward(x, n, gate_up.data() + inter, 2 * inter);
  if (act_ == Activation::kGeluTanh) {
    cpu::GeluTanhAndMul(gate_up.data(), n, inter, act.data());
  } else {
    cpu::SiluAndMul(gate_up.data(), n, inter, act.data());
  }
  down_.Forward(act.data(), n, y);
}

}  // namespace moe
