#include "model/forward_batch.h"

#include <algorithm>
#include <cstdlib>

namespace moe {
namespace {

// Rows [begin, end) of a [num_tokens, d] tensor; an empty tensor stays empty.
Tensor Rows(const Tensor& t, int64_t begin, int64_t end) {
  if (t.empty()) return Tensor();
  std::vector<int64_t> rows;
  for (int64_t r = begin; r < end; ++r) rows.push_back(r);
  return GatherRows(t, rows);
}

// Tokens [begin, end) of `batch`, which start at a chunk boundary or inside a chunk.
ForwardBatch Slice(const ForwardBatch& batch, int64_t begin, int64_t end) {
  ForwardBatch out;
  for (const ForwardChunk& c : batch.chunks) {
    const int64_t b = std::max(c.first_token, begin);
    const int64_t e = std::min(c.first_token + c.num_tokens, end);
    if (b >= e) continue;
    ForwardChunk piece = c;
    piece.first_token = b - begin;
    piece.num_tokens = e - b;
    piece.start_pos = c.start_pos + (b - c.first_token);
    out.chunks.push_back(piece);
  }
  out.positions.assign(batch.positions.begin() + begin, batch.positions.begin() + end);
  out.rope_cos = Rows(batch.rope_cos, begin, end);
  out.rope_sin = Rows(batch.rope_sin, begin, end);
  out.local_rope_cos = Rows(batch.local_rope_cos, begin, end);
  out.local_rope_sin = Rows(batch.local_rope_sin, begin, end);
  return out;
}

}  // namespace

MicroBatches SplitInTwo(const ForwardBatch& batch) {
  const int64_t n = batch.num_tokens(), half = n / 2;
  // The chunk boundary nearest the middle ...
  int64_t split = 0;
  for (const ForwardChunk& c : batch.chunks) {
    for (const int64_t edge : {c.first_token, c.first_token + c.num_tokens}) {
      if (std::abs(edge - half) < std::abs(split - half)) split = edge;
    }
  }
  // ... or the middle itself, inside a chunk whose two pieces both stay prefills.
  for (const ForwardChunk& c : batch.chunks) {
    if (half - c.first_token > kFewTokenChunk &&
        c.first_token + c.num_tokens - half > kFewTokenChunk) {
      split = half;
    }
  }
  return {{Slice(batch, 0, split), Slice(batch, split, n)}, split};
}

}  // namespace moe
