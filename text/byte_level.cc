#include "text/byte_level.h"

#include <array>
#include <cstdint>

#include "text/utf8.h"

namespace moe::text {
namespace {

// Printable Latin-1 bytes stand for themselves; the other 68 bytes take the code points from
// U+0100 on, in byte order.
struct Alphabet {
  std::array<char32_t, 256> char_of_byte;
  std::array<int16_t, 0x144> byte_of_char;  // -1: not in the alphabet
  Alphabet() {
    byte_of_char.fill(-1);
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      char_of_byte[b] = printable ? static_cast<char32_t>(b) : next++;
      byte_of_char[char_of_byte[b]] = static_cast<int16_t>(b);
    }
  }
};

const Alphabet& TheAlphabet() {
  static const Alphabet alphabet;
  return alphabet;
}

}  // namespace

std::string ToByteLevel(std::string_view bytes) {
  const Alphabet& a = TheAlphabet();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) AppendUtf8(a.char_of_byte[static_cast<uint8_t>(c)], &out);
  return out;
}

std::optional<std::string> FromByteLevel(std::string_view text) {
  const Alphabet& a = TheAlphabet();
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const auto b0 = static_cast<uint8_t>(text[i]);
    char32_t cp;
    if (b0 < 0x80) {
      cp = b0;
      i += 1;
    } else if ((b0 & 0xE0) == 0xC0 && i + 1 < text.size()) {
      cp = ((b0 & 0x1F) << 6) | (static_cast<uint8_t>(text[i + 1]) & 0x3F);
      i += 2;
    } else {
      return std::nullopt;  // three- and four-byte characters are all outside the alphabet
    }
    if (cp >= a.byte_of_char.size() || a.byte_of_char[cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(a.byte_of_char[cp]));
  }
  return out;
}

}  // namespace moe::text
