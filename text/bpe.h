// Byte-pair encoding over bytes: a piece of text starts as one symbol per byte, and the adjacent
// pair with the lowest merge rank is merged (leftmost first on ties) until no pair can merge.
// Both vocabulary forms reduce to this: HF `tokenizer.json` BPE (ranked merge list, byte-level
// alphabet decoded to bytes at load) and tiktoken (a token's rank is its id, and any two tokens
// that concatenate to a third merge with that third token's rank). SentencePiece-style
// vocabularies (Gemma, Llama 2, Mistral) start from one symbol per character instead; a character
// without a token becomes its bytes' "<0xXX>" tokens (byte_fallback) or the unknown token.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace moe::text {

class Bpe {
 public:
  // `tokens[id]` holds the bytes of token `id` (empty: no token with that id). `merges` are the
  // pairs in rank order, each part a token's bytes; the merged token must be in `tokens` too.
  // With `ignore_merges`, a piece that is itself a token is that token (HF's `ignore_merges`).
  static absl::StatusOr<Bpe> FromMerges(
      std::vector<std::string> tokens,
      const std::vector<std::pair<std::string, std::string>>& merges, bool ignore_merges);

  // tiktoken's mergeable ranks: `tokens[rank]` are the token's bytes.
  static Bpe FromRanks(std::vector<std::string> tokens);

  // Switches to SentencePiece-style symbols (characters, with the fallbacks above; `unk`: the
  // unknown token's id, consecutive ones fused into one with `fuse_unk`).
  void UseCharacterSymbols(bool byte_fallback, std::optional<int32_t> unk, bool fuse_unk);

  Bpe() = default;

  // Appends the ids of `piece` (one pre-tokenized piece). Bytes with no token are dropped, as HF's
  // BPE does without an unknown token.
  void Encode(std::string_view piece, std::vector<int32_t>* ids) const;

  std::optional<int32_t> Find(std::string_view bytes) const;
  const std::vector<std::string>& tokens() const { return tokens_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t id;
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  // Takes the tokens and indexes them (bytes → id, the single bytes' ids).
  Bpe(std::vector<std::string> tokens, bool whole_piece_first);

  std::vector<std::string> tokens_;
  absl::flat_hash_map<std::string, int32_t> id_of_;
  std::array<int32_t, 256> byte_id_{};
  absl::flat_hash_map<uint64_t, Merge> merges_;
  bool whole_piece_first_ = false;
  bool character_symbols_ = false;
  std::array<int32_t, 256> fallback_id_{};  // "<0xXX>" tokens' ids (-1: none or no byte_fallback)
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
};

}  // namespace moe::text
