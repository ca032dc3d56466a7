// Unicode normalization and character classes (utf8proc, Unicode's own tables).
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace moe::text {

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };

// `text` in the given normal form. Text that is not UTF-8 is returned unchanged.
std::string Normalize(std::string_view text, NormalForm form);

// The code point at text[*i] (advancing *i past it); U+FFFD for a byte that starts no character.
char32_t NextCodePoint(std::string_view text, size_t* i);

// Rust's char::is_whitespace and char::is_alphanumeric (with '_'), as HF tokenizers use them for
// added tokens' `lstrip`/`rstrip`/`single_word`.
bool IsWhitespace(char32_t c);
bool IsWordCharacter(char32_t c);

}  // namespace moe::text
