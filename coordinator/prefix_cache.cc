#include "coordinator/prefix_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace moe {
namespace {

constexpr uint64_t kRoot = 0x6a09e667f3bcc909ull;  // the "parent" of a sequence's first block

}  // namespace

PrefixCache::PrefixCache(int64_t num_blocks, int64_t block_size, bool enabled)
    : block_size_(block_size), enabled_(enabled), blocks_(static_cast<size_t>(num_blocks)) {
  free_.reserve(blocks_.size());
  for (int64_t i = num_blocks - 1; i >= 0; --i) free_.push_back(static_cast<int32_t>(i));
}

uint64_t PrefixCache::ChainHash(uint64_t parent, const int32_t* tokens, int64_t n) {
  uint64_t h = parent;
  for (int64_t i = 0; i < n; ++i) {  // splitmix64's finalizer over each token in turn
    h ^= static_cast<uint64_t>(static_cast<uint32_t>(tokens[i])) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
  }
  return h;
}

int32_t PrefixCache::Lookup(uint64_t parent, const int32_t* tokens) const {
  auto it = by_hash_.find(ChainHash(parent, tokens, block_size_));
  if (it == by_hash_.end()) return -1;
  const Block& b = blocks_[static_cast<size_t>(it->second)];
  if (!b.cached || b.parent != parent || static_cast<int64_t>(b.tokens.size()) != block_size_ ||
      !std::equal(b.tokens.begin(), b.tokens.end(), tokens)) {
    return -1;
  }
  return it->second;
}

std::vector<int32_t> PrefixCache::CachedPrefix(const std::vector<int32_t>& tokens) const {
  std::vector<int32_t> ids;
  if (!enabled_ || tokens.empty()) return ids;
  const int64_t most = (static_cast<int64_t>(tokens.size()) - 1) / block_size_;
  uint64_t parent = kRoot;
  for (int64_t b = 0; b < most; ++b) {
    const int32_t id = Lookup(parent, tokens.data() + b * block_size_);
    if (id < 0) break;
    ids.push_back(id);
    parent = blocks_[static_cast<size_t>(id)].hash;
  }
  return ids;
}

int64_t PrefixCache::Peek(const std::vector<int32_t>& tokens) const {
  return static_cast<int64_t>(CachedPrefix(tokens).size()) * block_size_;
}

void PrefixCache::Reference(int32_t id) {
  Block& b = blocks_[static_cast<size_t>(id)];
  if (b.refs == 0 && b.cached) lru_.erase(b.lru);
  ++b.refs;
}

int64_t PrefixCache::Match(const std::vector<int32_t>& tokens, std::vector<int32_t>* table) {
  const std::vector<int32_t> ids = CachedPrefix(tokens);
  for (int32_t id : ids) {
    Reference(id);
    table->push_back(id);
  }
  return static_cast<int64_t>(ids.size()) * block_size_;
}

absl::Status PrefixCache::EnsureCapacity(std::vector<int32_t>* table, int64_t tokens) {
  const int64_t need = (tokens + block_size_ - 1) / block_size_ - static_cast<int64_t>(table->size());
  if (need <= 0) return absl::OkStatus();
  if (need > available_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("need ", need, " KV blocks, ", available_blocks(), " can be had"));
  }
  for (int64_t i = 0; i < need; ++i) {
    int32_t id;
    if (!free_.empty()) {
      id = free_.back();
      free_.pop_back();
    } else {  // evict the least recently used cached block no sequence holds
      id = lru_.front();
      lru_.pop_front();
      Block& b = blocks_[static_cast<size_t>(id)];
      by_hash_.erase(b.hash);
      b.cached = false;
      b.tokens.clear();
      ++evictions_;
    }
    blocks_[static_cast<size_t>(id)].refs = 1;
    table->push_back(id);
  }
  return absl::OkStatus();
}

void PrefixCache::Commit(const std::vector<int32_t>& tokens, int64_t computed,
                         const std::vector<int32_t>& table) {
  if (!enabled_) return;
  const int64_t full = std::min<int64_t>(std::min<int64_t>(computed, static_cast<int64_t>(tokens.size())) / block_size_,
                                         static_cast<int64_t>(table.size()));
  uint64_t parent = kRoot;
  for (int64_t b = 0; b < full; ++b) {
    Block& blk = blocks_[static_cast<size_t>(table[static_cast<size_t>(b)])];
    if (blk.cached) {
      parent = blk.hash;
      continue;
    }
    const int32_t* first = tokens.data() + b * block_size_;
    const uint64_t h = ChainHash(parent, first, block_size_);
    if (!by_hash_.contains(h)) {  // else another block holds this prefix: this one stays private
      blk.cached = true;
      blk.hash = h;
      blk.parent = parent;
      blk.tokens.assign(first, first + block_size_);
      by_hash_.emplace(h, table[static_cast<size_t>(b)]);
    }
    parent = h;
  }
}

void PrefixCache::Release(int32_t id) {
  Block& b = blocks_[static_cast<size_t>(id)];
  if (--b.refs > 0) return;
  if (b.cached) {
    lru_.push_back(id);
    b.lru = std::prev(lru_.end());
  } else {
    free_.push_back(id);
  }
}

void PrefixCache::Release(std::vector<int32_t>* table) {
  for (int32_t id : *table) {
    if (id >= 0) Release(id);
  }
  table->clear();
}

void PrefixCache::Clear() {
  by_hash_.clear();
  lru_.clear();
  free_.clear();
  for (int64_t i = static_cast<int64_t>(blocks_.size()) - 1; i >= 0; --i) {
    Block& b = blocks_[static_cast<size_t>(i)];
    b = Block();
    free_.push_back(static_cast<int32_t>(i));
  }
}

PrefixCacheStats PrefixCache::stats() const {
  return {query_tokens_, hit_tokens_, static_cast<int64_t>(by_hash_.size()), evictions_};
}

}  // namespace moe
