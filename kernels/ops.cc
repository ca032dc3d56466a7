#include "kernels/ops.h"

#include "absl/strings/str_cat.h"

namespace moe {

const char* DeviceName(Device device) { return device == Device::kCuda ? "cuda" : "cpu"; }

void GatedMlpForward(Ops& ops, const PlacedMatrix& gate, const PlacedMatrix& up,
                     const PlacedMatrix& down, Activation act, const float* x, int64_t n,
                     float* y) {
  const int64_t inter = gate.rows(), hidden = gate.cols();
  DeviceArray<float> gate_up = ops.Allocate(n * 2 * inter), a = ops.Allocate(n * inter);
  // gate and up side by side in each row, as the gated activation reads them.
  ops.Linear(gate, x, n, hidden, gate_up.data(), 2 * inter);
  ops.Linear(up, x, n, hidden, gate_up.data() + inter, 2 * inter);
  ops.GatedActivation(gate_up.data(), n, inter, act, a.data());
  ops.Linear(down, a.data(), n, inter, y, down.rows());
}

absl::Status Ops::BeginRecording() {
  return absl::UnimplementedError(
      absl::StrCat("device ", DeviceName(device()), " does not record steps"));
}
absl::StatusOr<std::unique_ptr<Ops::Recording>> Ops::EndRecording() { return BeginRecording(); }
absl::Status Ops::Replay(const Recording&) { return BeginRecording(); }

absl::StatusOr<std::unique_ptr<Ops::ExpertSet>> Ops::PlaceExperts(std::vector<Expert> experts) {
  auto set = std::make_unique<ExpertSet>();
  set->experts = std::move(experts);
  return set;
}

void Ops::RoutedExperts(const ExpertSet& set, const float* x, int64_t rows, const int32_t* local,
                        const float* weight, int64_t k, Activation act, bool weight_on_input,
                        float* y) {
  const std::vector<Expert>& experts = set.experts;
  if (experts.empty() || rows == 0) return;  // rows reach only ranks that hold experts
  std::vector<int32_t> ids(static_cast<size_t>(rows * k));
  std::vector<float> weights(ids.size());
  CopyToHost(local, ids.size() * sizeof(int32_t), ids.data());
  CopyToHost(weight, weights.size() * sizeof(float), weights.data());
  RoutedExpertsByExpert(set, x, rows,
                        GroupRowsByExpert(ids.data(), weights.data(), rows, k, experts.size()), act,
                        weight_on_input, y);
}

void Ops::RoutedExpertsByExpert(const ExpertSet& set, const float* x, int64_t rows,
                                const RowsPerExpert& grouped, Activation act, bool weight_on_input,
                                float* y) {
  const std::vector<Expert>& experts = set.experts;
  const int64_t h = experts.front().down->rows();
  const std::vector<std::vector<int32_t>>& expert_rows = grouped.rows;
  const std::vector<std::vector<float>>& expert_weights = grouped.weights;
  std::vector<bool> active(experts.size());
  for (size_t e = 0; e < experts.size(); ++e) active[e] = !expert_rows[e].empty();
  ForEachExpert(static_cast<int64_t>(experts.size()), active, y, rows, h,
                [&](int64_t e, float* acc) {
                  const Expert& ex = experts[static_cast<size_t>(e)];
                  const std::vector<float>& w = expert_weights[e];
                  const auto n = static_cast<int64_t>(w.size());
                  DeviceArray<int32_t> index = Place(expert_rows[e]);
                  DeviceArray<float> scales = Place(Tensor({n}, FloatVector(w.begin(), w.end())));
                  DeviceArray<float> in = Allocate(n * h), out = Allocate(n * h);
                  GatherRows(x, index.data(), n, h, in.data());
                  if (weight_on_input) ScaleRows(in.data(), scales.data(), n, h);
                  GatedMlpForward(*this, *ex.gate, *ex.up, *ex.down, act, in.data(), n, out.data());
                  AddScaledRows(out.data(), weight_on_input ? nullptr : scales.data(), index.data(),
                                n, h, acc);
                });
}

RowsPerExpert GroupRowsByExpert(const int32_t* local, const float* weight, int64_t rows, int64_t k,
                                size_t experts) {
  RowsPerExpert g;
  g.rows.resize(experts);
  g.weights.resize(experts);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = local[i * k + j];
      if (e < 0) continue;
      g.rows[e].push_back(static_cast<int32_t>(i));
      g.weights[e].push_back(weight[i * k + j]);
    }
  }
  return g;
}

DeviceArray<float> GatherRows(Ops& ops, const float* x, const std::vector<int64_t>& rows,
                              int64_t dim) {
  const auto n = static_cast<int64_t>(rows.size());
  DeviceArray<int32_t> index = ops.Place(std::vector<int32_t>(rows.begin(), rows.end()));
  DeviceArray<float> out = ops.Allocate(n * dim);
  ops.GatherRows(x, index.data(), n, dim, out.data());
  return out;
}

Tensor ToHost(Ops& ops, const DeviceArray<float>& a, std::vector<int64_t> shape) {
  Tensor t = Tensor::Uninitialized(std::move(shape));
  ops.CopyToHost(a.data(), t.bytes(), t.data());
  return t;
}

}  // namespace moe
