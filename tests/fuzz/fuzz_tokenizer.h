// A small byte-level BPE tokenizer.json (every byte, a few merges, two added tokens, NFC, a
// digit split, the BOS template) for the fuzz targets.
#pragma once

#include <cstdio>
#include <string>

namespace moe::fuzz {

constexpr char kTokenizerJson[] = R"({
  "added_tokens": [{"id": 300, "content": "<s>", "special": true},
                   {"id": 301, "content": "<t>", "special": false, "lstrip": true, "rstrip": true}],
  "normalizer": {"type": "NFC"},
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated"},
    {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]},
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [300], "tokens": ["<s>"]}}},
  "decoder": {"type": "ByteLevel"},
  "model": {"type": "BPE", "vocab": {VOCAB}, "merges": ["Ġ t", "h e", "Ġt he", "i n"]}})";

// A vocabulary of every byte plus a few merges, as byte-level JSON text.
inline std::string FullTokenizerJson() {
  std::string vocab;
  const std::string bytes_json = [] {
    std::string out;
    int next = 0x100;
    for (int b = 0; b < 256; ++b) {
      // The byte-level character of byte b, JSON-escaped through \u.
      int cp = b;
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      if (!printable) cp = next++;
      char buf[32];
      std::snprintf(buf, sizeof(buf), "\"\\u%04x\": %d, ", cp, b);
      out += buf;
    }
    return out;
  }();
  vocab = "{" + bytes_json + "\"Ġt\": 256, \"he\": 257, \"Ġthe\": 258, \"in\": 259}";
  std::string json = kTokenizerJson;
  json.replace(json.find("{VOCAB}"), 7, vocab);
  return json;
}

}  // namespace moe::fuzz
