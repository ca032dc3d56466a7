#include "model/mlp.h"

#include "common/status_macros.h"

namespace moe {

absl::StatusOr<GatedMlp> GatedMlp::Load(Ops& ops, Checkpoint& ck, const MlpWeights& w, Range part,
                                        Activation act) {
  GatedMlp m;
  m.ops_ = &ops;
  m.act_ = act;
  const int64_t hidden = w.gate_proj.shape.at(1);
  MOE_ASSIGN_OR_RETURN(m.gate_, Linear::Load(ops, ck, w.gate_proj, part, {0, hidden}));
  MOE_ASSIGN_OR_RETURN(m.up_, Linear::Load(ops, ck, w.up_proj, part, {0, hidden}));
  MOE_ASSIGN_OR_RETURN(m.down_, Linear::Load(ops, ck, w.down_proj, {0, hidden}, part));
  return m;
}

absl::StatusOr<GatedMlp> GatedMlp::LoadStacked(Ops& ops, Checkpoint& ck, const WeightSpec& gate_up,
                                               const WeightSpec& down, int64_t expert,
                                               Activation act) {
  MOE_ASSIGN_OR_RETURN(Tensor gu, ck.LoadStackedPart(gate_up.name, gate_up.shape, expert));
  MOE_ASSIGN_OR_RETURN(Tensor dn, ck.LoadStackedPart(down.name, down.shape, expert));
  const int64_t hidden = gu.dim(0), inter = gu.dim(1) / 2;
  Tensor gate({inter, hidden}), up({inter, hidden}), down_t({hidden, inter});
  for (int64_t r = 0; r < hidden; ++r) {
    for (int64_t i = 0; i < inter; ++i) {
      gate.row(i)[r] = gu.row(r)[i];
      up.row(i)[r] = gu.row(r)[inter + i];
      down_t.row(r)[i] = dn.row(i)[r];
    }
  }
  GatedMlp m;
  m.ops_ = &ops;
  m.act_ = act;
  MOE_ASSIGN_OR_RETURN(m.gate_, Linear::FromTensor(ops, std::move(gate)));
  MOE_ASSIGN_OR_RETURN(m.up_, Linear::FromTensor(ops, std::move(up)));
  MOE_ASSIGN_OR_RETURN(m.down_, Linear::FromTensor(ops, std::move(down_t)));
  return m;
}

void GatedMlp::Forward(const float* x, int64_t n, float* y) const {
  GatedMlpForward(*ops_, gate_.weight(), up_.weight(), down_.weight(), act_, x, n, y);
}

}  // namespace moe
