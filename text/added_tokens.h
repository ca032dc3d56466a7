// Added tokens (special tokens such as "<｜begin▁of▁sentence｜>", "<|im_end|>", "[EOS]"): found in
// the text before anything else runs, leftmost-longest first, so their text never reaches the
// pre-tokenizer. Matching follows HF tokenizers' AddedVocabulary, including `lstrip`, `rstrip`
// and `single_word`.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"

namespace moe::text {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;       // the match takes in whitespace before it
  bool rstrip = false;       // ... and after it
  bool single_word = false;  // matches only where no word character touches it
};

class AddedTokens {
 public:
  AddedTokens() = default;
  explicit AddedTokens(std::vector<AddedToken> tokens);

  // Walks `text`, calling on_text for each stretch between added tokens (never empty) and
  // on_token for each added token, in order.
  void Split(std::string_view text, absl::FunctionRef<void(std::string_view)> on_text,
             absl::FunctionRef<void(const AddedToken&)> on_token) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  struct Match {
    size_t begin, end;
    int32_t token;  // index into tokens_
  };
  bool LongestAt(std::string_view text, size_t pos, Match* match) const;

  std::vector<AddedToken> tokens_;
  // A byte trie: edges keyed by (node << 8 | byte); terminal_[node] is a token index or -1.
  absl::flat_hash_map<uint64_t, int32_t> edges_;
  std::vector<int32_t> terminal_;
  bool first_byte_[256] = {};
};

}  // namespace moe::text
