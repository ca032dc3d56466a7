#include "text/added_tokens.h"

#include "text/unicode.h"

namespace moe::text {
namespace {

// Where the character that ends just before text[pos] starts (pos > floor), not before `floor`.
size_t CharStartBefore(std::string_view text, size_t pos, size_t floor = 0) {
  size_t start = pos - 1;
  while (start > floor && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  return start;
}

// The code point that ends just before text[pos] (pos > 0).
char32_t CodePointBefore(std::string_view text, size_t pos) {
  size_t start = CharStartBefore(text, pos);
  return NextCodePoint(text, &start);
}

}  // namespace

AddedTokens::AddedTokens(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  terminal_.push_back(-1);
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& content = tokens_[t].content;
    if (content.empty()) continue;
    first_byte_[static_cast<unsigned char>(content[0])] = true;
    int32_t node = 0;
    for (char c : content) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(c);
      auto [it, inserted] = edges_.try_emplace(key, static_cast<int32_t>(terminal_.size()));
      if (inserted) terminal_.push_back(-1);
      node = it->second;
    }
    if (terminal_[node] < 0) terminal_[node] = static_cast<int32_t>(t);  // first one wins
  }
}

bool AddedTokens::LongestAt(std::string_view text, size_t pos, Match* match) const {
  int32_t node = 0, best = -1;
  size_t best_end = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    auto it = edges_.find((static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[i]));
    if (it == edges_.end()) break;
    node = it->second;
    const int32_t t = terminal_[node];
    if (t < 0) continue;
    const AddedToken& token = tokens_[t];
    if (token.single_word) {
      const bool word_before = pos > 0 && IsWordCharacter(CodePointBefore(text, pos));
      size_t after = i + 1;
      const bool word_after =
          after < text.size() && IsWordCharacter(NextCodePoint(text, &after));
      if (word_before || word_after) continue;
    }
    best = t;
    best_end = i + 1;
  }
  if (best < 0) return false;
  *match = {pos, best_end, best};
  return true;
}

void AddedTokens::Split(std::string_view text, absl::FunctionRef<void(std::string_view)> on_text,
                        absl::FunctionRef<void(const AddedToken&)> on_token) const {
  size_t done = 0;  // text[0, done) has been handed out
  size_t pos = 0;
  Match m;
  while (pos < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])] || !LongestAt(text, pos, &m)) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[m.token];
    size_t begin = m.begin, end = m.end;
    if (token.lstrip) {
      while (begin > done) {
        const size_t start = CharStartBefore(text, begin, done);
        size_t probe = start;
        if (!IsWhitespace(NextCodePoint(text, &probe)) || probe != begin) break;
        begin = start;
      }
    }
    if (token.rstrip) {
      while (end < text.size()) {
        size_t probe = end;
        if (!IsWhitespace(NextCodePoint(text, &probe))) break;
        end = probe;
      }
    }
    if (begin > done) on_text(text.substr(done, begin - done));
    on_token(token);
    done = pos = end;
  }
  if (done < text.size()) on_text(text.substr(done));
}

}  // namespace moe::text
