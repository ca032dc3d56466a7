// Reads a checkpoint folder's tokenizer: `tokenizer.json` (HF tokenizers' format) or, for Kimi K2,
// `tiktoken.model` (one "base64-bytes rank" per line) with the special tokens of
// `tokenizer_config.json`'s `added_tokens_decoder`. `tokenizer_config.json`, when present, also
// gives `bos_token`, `eos_token`, `add_bos_token` and `add_eos_token`.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "text/tokenizer.h"

namespace moe::text {

// Kimi K2's split pattern (tokenization_kimi.py's pat_str) in PCRE2's syntax: its character-class
// intersections `[...&&[^\p{Han}]]` become a negative lookahead, and `\p{Han}` becomes
// `\p{sc:Han}` (PCRE2's `\p{Han}` also matches the Script_Extensions, which take in CJK
// punctuation such as "。" and "】"; tiktoken's regex engine matches the Script only).
extern const std::string_view kKimiPattern;

// The tokenizer of the checkpoint in `dir`. Errors name the file and what is wrong in it;
// NotFound when the folder has neither file.
absl::StatusOr<std::shared_ptr<const Tokenizer>> LoadTokenizer(const std::string& dir);

}  // namespace moe::text
