#include "model/layers.h"

#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/weight_matmul.h"

namespace moe {

absl::StatusOr<Linear> Linear::Load(Checkpoint& ck, const WeightSpec& spec, Range rows,
                                    Range cols) {
  const int64_t out = spec.shape.at(0), in = spec.shape.at(1);
  SliceSpec slice = SliceSpec::All();
  if (rows.size() != out) slice = SliceSpec::Rows(rows.begin, rows.end);
  if (cols.size() != in) {
    MOE_CHECK(rows.size() == out);
    slice = SliceSpec::Cols(cols.begin, cols.end);
  }
  Linear l;
  MOE_ASSIGN_OR_RETURN(l.weight_, ck.LoadMatrix(spec.name, spec.shape, slice, spec.quantizable()));
  return l;
}

Linear Linear::FromTensor(Tensor w) {
  auto owned = std::make_shared<Tensor>(std::move(w));
  Linear l;
  l.weight_.format = WeightFormat::kF32;
  l.weight_.rows = owned->dim(0);
  l.weight_.cols = owned->dim(1);
  l.weight_.data = reinterpret_cast<const uint8_t*>(owned->data());
  l.weight_.row_stride = owned->dim(1) * static_cast<int64_t>(sizeof(float));
  l.weight_.owner = owned;
  return l;
}

absl::Status Linear::LoadBias(Checkpoint& ck, const WeightSpec& spec, Range rows) {
  MOE_ASSIGN_OR_RETURN(Tensor full, ck.Load(spec.name, spec.shape));
  if (rows.size() != out_features()) {
    return absl::InvalidArgumentError(
        absl::StrCat(spec.name, ": ", rows.size(), " bias rows for ", out_features(), " outputs"));
  }
  bias_ = Tensor({rows.size()});
  std::memcpy(bias_.data(), full.data() + rows.begin,
              static_cast<size_t>(rows.size()) * sizeof(float));
  return absl::OkStatus();
}

void Linear::Forward(const float* x, int64_t n, float* y, int64_t ldy) const {
  const int64_t ld = ldy < 0 ? out_features() : ldy;
  cpu::MatMulNT(n, x, in_features(), weight_, y, ld);
  if (bias_.empty()) return;
  for (int64_t r = 0; r < n; ++r) cpu::Add(y + r * ld, bias_.data(), bias_.numel());
}

absl::StatusOr<RmsNorm> RmsNorm::Load(Checkpoint& ck, const WeightSpec& spec, double eps,
                                      bool unit_offset) {
  RmsNorm n;
  MOE_ASSIGN_OR_RETURN(n.weight_, ck.Load(spec.name, spec.shape));
  if (unit_offset) {
    for (int64_t i = 0; i < n.weight_.numel(); ++i) n.weight_[i] += 1.0f;
  }
  n.eps_ = static_cast<float>(eps);
  return n;
}

void RmsNorm::Forward(const float* x, int64_t n, float* y, int64_t ld) const {
  const int64_t dim = weight_.numel();
  cpu::RmsNorm(x, n, dim, ld < 0 ? dim : ld, weight_.data(), eps_, y);
}

absl::StatusOr<VocabParallelEmbedding> VocabParallelEmbedding::Load(Checkpoint& ck,
                                                                    const WeightSpec& spec,
                                                                    Range rows, Communicator* tp) {
  VocabParallelEmbedding e;
  const int64_t vocab = spec.shape.at(0);
  SliceSpec slice = rows.size() == vocab ? SliceSpec::All() : SliceSpec::Rows(rows.begin, rows.end);
  MOE_ASSIGN_OR_RETURN(e.weight_, ck.LoadMatrix(spec.name, spec.shape, slice));
  e.rows_ = rows;
  e.tp_ = tp;
  return e;
}

absl::StatusOr<Tensor> VocabParallelEmbedding::Forward(const std::vector<int32_t>& tokens) const {
  const int64_t hidden = weight_.cols;
  Tensor out({static_cast<int64_t>(tokens.size()), hidden});
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (rows_.contains(tokens[i])) {
      const int64_t r = tokens[i] - rows_.begin;
      cpu::DequantizeRows(weight_, r, r + 1, out.row(static_cast<int64_t>(i)));
    }
  }
  if (tp_->size() > 1) MOE_RETURN_IF_ERROR(tp_->AllReduceSum(out.data(), out.numel()));
  return out;
}

absl::StatusOr<ParallelLmHead> ParallelLmHead::Load(Checkpoint& ck, const WeightSpec& spec,
                                                    int tp_size, Communicator* tp) {
  ParallelLmHead h;
  const int64_t vocab = spec.shape.at(0), hidden = spec.shape.at(1);
  MOE_ASSIGN_OR_RETURN(h.local_,
                       Linear::Load(ck, spec, EvenSplit(vocab, tp_size, tp->rank()), {0, hidden}));
  h.vocab_ = vocab;
  h.tp_size_ = tp_size;
  h.tp_ = tp;
  return h;
}

absl::StatusOr<Tensor> ParallelLmHead::Forward(const float* x, int64_t n) const {
  const int64_t local = local_.out_features();
  Tensor part({n, local});
  local_.Forward(x, n, part.data());
  if (tp_size_ == 1) return part;
  std::vector<size_t> recv_bytes(tp_size_);
  for (int r = 0; r < tp_size_; ++r) {
    recv_bytes[r] = static_cast<size_t>(n * EvenSplit(vocab_, tp_size_, r).size()) * sizeof(float);
  }
  FloatVector gathered(static_cast<size_t>(n * vocab_));
  MOE_RETURN_IF_ERROR(tp_->AllGatherV(part.data(), part.bytes(), gathered.data(), recv_bytes));
  // gathered holds [rank][n][vocab_r]; interleave into [n][vocab].
  Tensor out({n, vocab_});
  size_t off = 0;
  for (int r = 0; r < tp_size_; ++r) {
    const Range v = EvenSplit(vocab_, tp_size_, r);
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(out.row(i) + v.begin, gathered.data() + off + i * v.size(),
                  static_cast<size_t>(v.size()) * sizeof(float));
    }
    off += static_cast<size_t>(n * v.size());
  }
  return out;
}

}  // namespace moe
