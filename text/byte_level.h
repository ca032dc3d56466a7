// GPT-2's byte-level alphabet: every byte is written as one printable Unicode character, so a
// vocabulary of byte strings can be stored as JSON text. HF `tokenizer.json` files with a
// `ByteLevel` pre-tokenizer or decoder store their vocabulary and merges this way.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace moe::text {

// The byte-level spelling of `bytes` (one character per byte).
std::string ToByteLevel(std::string_view bytes);

// The bytes a byte-level string spells, or nullopt when it holds a character outside the
// alphabet (added tokens such as "<｜begin▁of▁sentence｜>" are stored as plain text).
std::optional<std::string> FromByteLevel(std::string_view text);

}  // namespace moe::text
