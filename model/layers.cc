#include "model/layers.h"

#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe {

absl::StatusOr<Linear> Linear::Load(Ops& ops, Checkpoint& ck, const WeightSpec& spec, Range rows,
                                    Range cols) {
  const int64_t out = spec.shape.at(0), in = spec.shape.at(1);
  SliceSpec slice = SliceSpec::All();
  if (rows.size() != out) slice = SliceSpec::Rows(rows.begin, rows.end);
  if (cols.size() != in) {
    MOE_CHECK(rows.size() == out);
    slice = SliceSpec::Cols(cols.begin, cols.end);
  }
  Linear l;
  l.ops_ = &ops;
  MOE_ASSIGN_OR_RETURN(WeightMatrix w,
                       ck.LoadMatrix(spec.name, spec.shape, slice, spec.quantizable()));
  MOE_ASSIGN_OR_RETURN(l.weight_, ops.Place(std::move(w)));
  return l;
}

absl::StatusOr<Linear> Linear::FromTensor(Ops& ops, Tensor t) {
  MOE_ASSIGN_OR_RETURN(PlacedMatrix w, ops.Place(F32WeightMatrix(std::move(t))));
  return FromPlaced(ops, std::move(w));
}

Linear Linear::FromPlaced(Ops& ops, PlacedMatrix w) {
  Linear l;
  l.ops_ = &ops;
  l.weight_ = std::move(w);
  return l;
}

absl::Status Linear::LoadBias(Checkpoint& ck, const WeightSpec& spec, Range rows) {
  MOE_ASSIGN_OR_RETURN(Tensor full, ck.Load(spec.name, spec.shape));
  if (rows.size() != out_features()) {
    return absl::InvalidArgumentError(
        absl::StrCat(spec.name, ": ", rows.size(), " bias rows for ", out_features(), " outputs"));
  }
  Tensor bias({rows.size()});
  std::memcpy(bias.data(), full.data() + rows.begin,
              static_cast<size_t>(rows.size()) * sizeof(float));
  bias_ = ops_->Place(std::move(bias));
  return absl::OkStatus();
}

void Linear::Forward(const float* x, int64_t n, float* y, int64_t ldy) const {
  const int64_t ld = ldy < 0 ? out_features() : ldy;
  ops_->Linear(weight_, x, n, in_features(), y, ld);
  if (!bias_.empty()) ops_->AddToRows(y, n, bias_.size(), ld, bias_.data());
}

absl::StatusOr<RmsNorm> RmsNorm::Load(Ops& ops, Checkpoint& ck, const WeightSpec& spec, double eps,
                                      bool unit_offset) {
  MOE_ASSIGN_OR_RETURN(Tensor w, ck.Load(spec.name, spec.shape));
  if (unit_offset) {
    for (int64_t i = 0; i < w.numel(); ++i) w[i] += 1.0f;
  }
  return FromTensor(ops, std::move(w), eps);
}

RmsNorm RmsNorm::FromTensor(Ops& ops, Tensor weight, double eps) {
  RmsNorm n;
  n.ops_ = &ops;
  n.weight_ = ops.Place(std::move(weight));
  n.eps_ = static_cast<float>(eps);
  return n;
}

void RmsNorm::Forward(const float* x, int64_t n, float* y, int64_t ld) const {
  const int64_t d = dim();
  ops_->RmsNorm(x, n, d, ld < 0 ? d : ld, weight_.data(), eps_, y);
}

absl::StatusOr<VocabParallelEmbedding> VocabParallelEmbedding::Load(Ops& ops, Checkpoint& ck,
                                                                    const WeightSpec& spec,
                                                                    Range rows, Communicator* tp) {
  VocabParallelEmbedding e;
  const int64_t vocab = spec.shape.at(0);
  SliceSpec slice = rows.size() == vocab ? SliceSpec::All() : SliceSpec::Rows(rows.begin, rows.end);
  MOE_ASSIGN_OR_RETURN(WeightMatrix w, ck.LoadMatrix(spec.name, spec.shape, slice));
  MOE_ASSIGN_OR_RETURN(e.weight_, ops.Place(std::move(w)));
  e.ops_ = &ops;
  e.rows_ = rows;
  e.tp_ = tp;
  return e;
}

absl::StatusOr<DeviceArray<float>> VocabParallelEmbedding::Forward(const int32_t* tokens,
                                                                   int64_t n) const {
  DeviceArray<float> out = ops_->Allocate(n * weight_.cols());
  ops_->Embedding(weight_, rows_.begin, tokens, n, out.data());
  if (tp_->size() > 1) MOE_RETURN_IF_ERROR(tp_->AllReduceSum(out.data(), out.size()));
  return out;
}

absl::StatusOr<ParallelLmHead> ParallelLmHead::Load(Ops& ops, Checkpoint& ck,
                                                    const WeightSpec& spec, int tp_size,
                                                    Communicator* tp) {
  ParallelLmHead h;
  const int64_t vocab = spec.shape.at(0), hidden = spec.shape.at(1);
  MOE_ASSIGN_OR_RETURN(
      h.local_, Linear::Load(ops, ck, spec, EvenSplit(vocab, tp_size, tp->rank()), {0, hidden}));
  h.ops_ = &ops;
  h.vocab_ = vocab;
  h.tp_size_ = tp_size;
  h.tp_ = tp;
  return h;
}

absl::StatusOr<DeviceArray<float>> ParallelLmHead::Forward(const float* x, int64_t n) const {
  const int64_t local = local_.out_features();
  DeviceArray<float> part = ops_->Allocate(n * local);
  local_.Forward(x, n, part.data());
  if (tp_size_ == 1) return part;
  std::vector<size_t> recv_bytes(tp_size_);
  for (int r = 0; r < tp_size_; ++r) {
    recv_bytes[r] = static_cast<size_t>(n * EvenSplit(vocab_, tp_size_, r).size()) * sizeof(float);
  }
  DeviceArray<float> gathered = ops_->Allocate(n * vocab_);
  MOE_RETURN_IF_ERROR(tp_->AllGatherV(part.data(), static_cast<size_t>(part.size()) * sizeof(float),
                                      gathered.data(), recv_bytes));
  // gathered holds [rank][n][vocab_r]; interleave into [n][vocab].
  DeviceArray<float> out = ops_->Allocate(n * vocab_);
  int64_t off = 0;
  for (int r = 0; r < tp_size_; ++r) {
    const Range v = EvenSplit(vocab_, tp_size_, r);
    ops_->CopyRows(gathered.data() + off, v.size(), n, v.size(), out.data() + v.begin, vocab_);
    off += n * v.size();
  }
  return out;
}

}  // namespace moe
