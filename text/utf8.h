// UTF-8 helpers for text that comes out of a tokenizer: token bytes need not end on a character
// boundary, and a byte-level vocabulary can produce byte strings that are not UTF-8 at all.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace moe::text {

// `bytes` as valid UTF-8: each ill-formed subsequence (the "maximal subpart" of Unicode §3.9, as
// Python's `bytes.decode(errors="replace")` and Rust's `String::from_utf8_lossy` cut them)
// becomes one U+FFFD.
std::string LossyUtf8(std::string_view bytes);

// How many leading bytes of `bytes` can be converted now without changing the result of converting
// all of it later: everything except a trailing sequence that is a valid but incomplete character.
size_t SettledUtf8Prefix(std::string_view bytes);

// Appends code point `cp` (< 0x110000) encoded as UTF-8.
void AppendUtf8(char32_t cp, std::string* out);

}  // namespace moe::text
