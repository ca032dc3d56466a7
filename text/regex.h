// A compiled PCRE2 pattern with Unicode properties (\p{L}, \p{Han}, ...) and lookaround, as the
// tokenizers' split patterns need. Immutable after construction; safe to use from many threads.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"

namespace moe::text {

class Regex {
 public:
  // Compiles `pattern` as UTF-8 with Unicode semantics for \s, \w, \d and POSIX classes.
  static absl::StatusOr<Regex> Compile(std::string_view pattern);

  // Calls on_match(begin, end) for every non-overlapping non-empty match in `text`, left to right
  // (leftmost-first alternation, as Rust's regex, Oniguruma and tiktoken's fancy-regex match).
  // Bytes that are not UTF-8 never match.
  void ForEachMatch(std::string_view text,
                    absl::FunctionRef<void(size_t begin, size_t end)> on_match) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Code;
  Regex(std::string pattern, std::shared_ptr<const Code> code)
      : pattern_(std::move(pattern)), code_(std::move(code)) {}

  std::string pattern_;
  std::shared_ptr<const Code> code_;
};

}  // namespace moe::text
