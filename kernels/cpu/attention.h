// Attention kernels on the CPU: MLA's, and grouped-query attention's.
#pragma once

#include <cstdint>

#include "common/kv_layout.h"  // FirstVisibleKey

namespace moe::cpu {

// Absorbed MLA decode for one query token over a paged latent KV cache.
//   q:      [heads, kv_lora + rope] — per head the absorbed query (W_UK^T q_nope) then q_pe
//   cache:  the layer's block pool; block b holds `block_size` rows of (kv_lora + rope) values,
//           [c_kv | k_pe], at cache + b * block_size * (kv_lora + rope)
//   blocks: the sequence's block table, covering ctx_len tokens
//   out:    [heads, kv_lora] — sum_t softmax_t(scale * q·row_t) * c_kv_t (W_UV applied by the
//   caller)
// With `parts` > 1 the positions are cut into that many ranges of whole blocks (at most one per
// block), attended in parallel, one thread each, and their sums combined (a long context's
// decode on several threads); otherwise on the calling thread.
void MlaDecodeAttention(const float* q, int64_t heads, int64_t kv_lora, int64_t rope,
                        const float* cache, const int32_t* blocks, int64_t block_size,
                        int64_t ctx_len, float scale, float* out, int parts = 1);

// MlaDecodeAttention over the positions [t0, t1) only (t0 a multiple of block_size), before the
// softmax's normalisation: max [heads] the largest scaled score, sum [heads] = sum_t
// exp(score_t - max), out [heads, kv_lora] = sum_t exp(score_t - max) c_kv_t.
void MlaDecodeAttentionPart(const float* q, int64_t heads, int64_t kv_lora, int64_t rope,
                            const float* cache, const int32_t* blocks, int64_t block_size,
                            int64_t t0, int64_t t1, float scale, float* out, float* max,
                            float* sum);

// Causal multi-head attention over expanded keys and values for one chunk of queries.
//   q [q_len, heads, dqk], k [ctx, heads, dqk], v [ctx, heads, dv], out [q_len, heads, dv].
//   Query i sits at position start + i and sees keys 0 .. start + i (ctx = start + q_len).
void CausalAttention(const float* q, const float* k, const float* v, int64_t q_len, int64_t ctx,
                     int64_t heads, int64_t dqk, int64_t dv, int64_t start, float scale,
                     float* out);

// The same with `kv_heads` key/value heads shared by groups of heads / kv_heads query heads:
// k [ctx, kv_heads, dqk], v [ctx, kv_heads, dv]; query head h reads K/V head h / (heads /
// kv_heads). With `window` > 0 (sliding-window attention) query i sees only the keys start + i -
// window + 1 .. start + i; with `chunk` > 0 (chunked attention) only the keys of its own chunk of
// `chunk` positions.
void GroupedCausalAttention(const float* q, const float* k, const float* v, int64_t q_len,
                            int64_t ctx, int64_t heads, int64_t kv_heads, int64_t dqk, int64_t dv,
                            int64_t start, float scale, float* out, int64_t window = 0,
                            int64_t chunk = 0);

// Grouped-query decode for one query token over a paged K/V cache.
//   q:      [heads, head_dim] (rotated)
//   cache:  the layer's block pool; a row is [k (kv_heads x head_dim) | v (kv_heads x head_dim)]
//   blocks: the sequence's block table, covering ctx_len tokens
//   out:    [heads, head_dim] = sum_t softmax_t(scale * q_h·k_t,g) v_t,g with g = h / (heads /
//   kv_heads) window, chunk: as GroupedCausalAttention's, for the query at position ctx_len - 1
void GqaDecodeAttention(const float* q, int64_t heads, int64_t kv_heads, int64_t head_dim,
                        const float* cache, const int32_t* blocks, int64_t block_size,
                        int64_t ctx_len, float scale, float* out, int64_t window = 0,
                        int64_t chunk = 0);

}  // namespace moe::cpu
