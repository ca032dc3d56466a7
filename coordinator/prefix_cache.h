// The KV blocks of one attention-DP group, with prefix caching: a full block whose positions are
// computed is named by a hash chained over its tokens and every token before it (its parent
// block's hash, then its own tokens), so a later sequence that starts with the same tokens finds
// it and computes only the rest. Blocks are reference counted: a block some sequence holds is
// never handed to another for writing; one that no sequence holds stays cached until its space
// is needed, then the least recently used goes first. A sequence only ever writes blocks past its
// cached prefix, and only full, computed blocks are cached, so a shared block is never written.
#pragma once

#include <cstdint>
#include <list>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"

namespace moe {

struct PrefixCacheStats {
  int64_t query_tokens = 0;  // prompt tokens looked up (since start)
  int64_t hit_tokens = 0;    // of which found cached
  int64_t cached_blocks = 0;  // now: blocks holding a cached prefix (held or not)
  int64_t evictions = 0;     // since start
};

class PrefixCache {
 public:
  // With `enabled` false it is a plain free list (Match finds nothing, Commit keeps nothing).
  PrefixCache(int64_t num_blocks, int64_t block_size, bool enabled);

  // How many leading tokens of `tokens` are cached, in whole blocks, leaving at least the last
  // token to compute (its logits are needed). Takes no references.
  int64_t Peek(const std::vector<int32_t>& tokens) const;
  // The same prefix, taken: its blocks are appended to the empty `table`, each referenced.
  // Returns the tokens it covers.
  int64_t Match(const std::vector<int32_t>& tokens, std::vector<int32_t>* table);
  // Counts an admitted sequence's lookup in the stats (a sequence that had to wait is not
  // counted at each attempt).
  void RecordLookup(int64_t query_tokens, int64_t hit_tokens) {
    query_tokens_ += query_tokens;
    hit_tokens_ += hit_tokens;
  }
  // Appends blocks until `table` covers `tokens` positions, evicting unreferenced cached blocks
  // (least recently used first) when no block is free. RESOURCE_EXHAUSTED, and no change, when
  // too few can be had.
  absl::Status EnsureCapacity(std::vector<int32_t>* table, int64_t tokens);
  // The full blocks of `table` whose `computed` positions of `tokens` are done become cached
  // (a block whose prefix is cached in another block already stays private).
  void Commit(const std::vector<int32_t>& tokens, int64_t computed, const std::vector<int32_t>& table);
  // Drops the sequence's references and clears `table` (entries of -1 hold nothing).
  void Release(std::vector<int32_t>* table);
  // Drops a sequence's reference to one block.
  void Release(int32_t block);
  // Forgets every cached prefix (the workers' caches are gone: they were relaunched). Every
  // block must have been released.
  void Clear();

  // Blocks a new sequence could get: free ones and unreferenced cached ones.
  int64_t available_blocks() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  int64_t total_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  PrefixCacheStats stats() const;

 private:
  struct Block {
    int32_t refs = 0;
    bool cached = false;
    uint64_t hash = 0;
    std::vector<int32_t> tokens;  // a cached block's own tokens, to rule out hash collisions
    uint64_t parent = 0;          // and its parent's hash
    std::list<int32_t>::iterator lru;  // valid while cached and unreferenced
  };
  static uint64_t ChainHash(uint64_t parent, const int32_t* tokens, int64_t n);
  // The blocks of the longest cached prefix Peek describes, in order.
  std::vector<int32_t> CachedPrefix(const std::vector<int32_t>& tokens) const;
  // The cached block holding these tokens after `parent`, or -1.
  int32_t Lookup(uint64_t parent, const int32_t* tokens) const;
  void Reference(int32_t id);

  const int64_t block_size_;
  const bool enabled_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;  // neither cached nor referenced
  std::list<int32_t> lru_;     // cached and unreferenced: front is the least recently used
  absl::flat_hash_map<uint64_t, int32_t> by_hash_;
  int64_t query_tokens_ = 0, hit_tokens_ = 0, evictions_ = 0;
};

}  // namespace moe
