#include "text/bpe.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"

namespace moe::text {
namespace {

// The bytes of the UTF-8 character a lead byte starts (1 for a byte that starts none).
size_t Utf8Length(uint8_t lead) {
  if (lead >= 0xF0 && lead < 0xF8) return 4;
  if (lead >= 0xE0) return lead < 0xF0 ? 3 : 1;
  if (lead >= 0xC0) return 2;
  return 1;
}

}  // namespace

Bpe::Bpe(std::vector<std::string> tokens, bool whole_piece_first)
    : tokens_(std::move(tokens)), whole_piece_first_(whole_piece_first) {
  id_of_.reserve(tokens_.size());
  for (size_t id = 0; id < tokens_.size(); ++id) {
    if (!tokens_[id].empty()) id_of_.try_emplace(tokens_[id], static_cast<int32_t>(id));
  }
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    auto it = id_of_.find(absl::string_view(&c, 1));
    byte_id_[b] = it == id_of_.end() ? -1 : it->second;
  }
}

absl::StatusOr<Bpe> Bpe::FromMerges(std::vector<std::string> tokens,
                                    const std::vector<std::pair<std::string, std::string>>& merges,
                                    bool ignore_merges) {
  Bpe bpe(std::move(tokens), ignore_merges);
  bpe.merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    const auto l = bpe.Find(left), r = bpe.Find(right), m = bpe.Find(left + right);
    if (!l || !r || !m) {
      return absl::InvalidArgumentError(absl::StrCat(
          "merge ", rank, " (\"", absl::CHexEscape(left), "\" + \"", absl::CHexEscape(right),
          "\"): ", !l ? "its left part" : !r ? "its right part" : "the merged token",
          " is not in the vocabulary"));
    }
    bpe.merges_.try_emplace(PairKey(*l, *r), Merge{static_cast<int32_t>(rank), *m});
  }
  return bpe;
}

Bpe Bpe::FromRanks(std::vector<std::string> tokens) {
  Bpe bpe(std::move(tokens), /*whole_piece_first=*/true);  // tiktoken looks a piece up first
  for (size_t rank = 0; rank < bpe.tokens_.size(); ++rank) {
    const std::string& t = bpe.tokens_[rank];
    if (t.empty()) continue;
    for (size_t cut = 1; cut < t.size(); ++cut) {
      const auto l = bpe.Find(std::string_view(t).substr(0, cut));
      const auto r = bpe.Find(std::string_view(t).substr(cut));
      if (l && r) {
        bpe.merges_.try_emplace(PairKey(*l, *r),
                                Merge{static_cast<int32_t>(rank), static_cast<int32_t>(rank)});
      }
    }
  }
  return bpe;
}

void Bpe::UseCharacterSymbols(bool byte_fallback, std::optional<int32_t> unk, bool fuse_unk) {
  character_symbols_ = true;
  for (int b = 0; b < 256; ++b) {
    const auto id = byte_fallback ? Find(absl::StrFormat("<0x%02X>", b)) : std::nullopt;
    fallback_id_[b] = id ? *id : -1;
  }
  unk_id_ = unk.value_or(-1);
  fuse_unk_ = fuse_unk;
}

std::optional<int32_t> Bpe::Find(std::string_view bytes) const {
  auto it = id_of_.find(absl::string_view(bytes.data(), bytes.size()));
  if (it == id_of_.end()) return std::nullopt;
  return it->second;
}

void Bpe::Encode(std::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.empty()) return;
  if (piece.size() == 1 || whole_piece_first_) {
    if (auto id = Find(piece)) {
      ids->push_back(*id);
      return;
    }
  }
  // Symbols form a linked list over the piece's bytes; a merge absorbs the right neighbour.
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // -1: none
    bool alive;
  };
  struct Candidate {
    int32_t rank, pos, id;
    bool operator<(const Candidate& o) const {  // the queue's top is the lowest rank, then leftmost
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> queue;  // a binary heap; its capacity is kept between calls
  symbols.clear();
  auto add = [&](int32_t id) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, -1, true});
    if (n > 0) symbols[n - 1].next = n;
  };
  if (!character_symbols_) {
    for (char c : piece) {
      const int32_t id = byte_id_[static_cast<uint8_t>(c)];
      if (id >= 0) add(id);
    }
  } else {
    bool last_unk = false;
    for (size_t i = 0; i < piece.size();) {
      const size_t n = std::min(Utf8Length(static_cast<uint8_t>(piece[i])), piece.size() - i);
      const std::string_view ch = piece.substr(i, n);
      i += n;
      if (auto id = Find(ch)) {
        add(*id);
        last_unk = false;
        continue;
      }
      bool all_bytes = true;
      for (char c : ch) all_bytes = all_bytes && fallback_id_[static_cast<uint8_t>(c)] >= 0;
      if (all_bytes) {
        for (char c : ch) add(fallback_id_[static_cast<uint8_t>(c)]);
        last_unk = false;
      } else if (unk_id_ >= 0 && !(fuse_unk_ && last_unk)) {
        add(unk_id_);
        last_unk = true;
      }
    }
  }
  queue.clear();
  auto offer = [&](int32_t pos) {
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    auto it = merges_.find(PairKey(symbols[pos].id, symbols[next].id));
    if (it == merges_.end()) return;
    queue.push_back({it->second.rank, pos, it->second.id});
    std::push_heap(queue.begin(), queue.end());
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) offer(i);
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end());
    const Candidate top = queue.back();
    queue.pop_back();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    // Stale when either side changed since the candidate was offered.
    auto it = merges_.find(PairKey(left.id, symbols[left.next].id));
    if (it == merges_.end() || it->second.rank != top.rank || it->second.id != top.id) continue;
    Symbol& right = symbols[left.next];
    left.id = top.id;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = top.pos;
    if (left.prev >= 0) offer(left.prev);
    offer(top.pos);
  }
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
    ids->push_back(symbols[i].id);
  }
}

}  // namespace moe::text
